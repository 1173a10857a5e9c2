"""Detection metrics in numpy: EER (the field's headline number), ROC AUC, accuracy,
confusion matrix, and the thresholds a deployment needs.

Convention: label 1 = spoof is the positive class, scores are P(spoof), and a file is called
spoof when score >= threshold. FPR = bona fide called spoof (false alarms); FNR = spoof
called bona fide (misses).
"""

from __future__ import annotations

import numpy as np


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (bona fide) or 1 (spoof)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def _both_classes(y: np.ndarray) -> None:
    if y.min() == y.max():
        raise ValueError("EER and AUC need both bona fide and spoof examples")


def error_rates(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds ascending, FPR, FNR) at every distinct score, plus +inf at the end."""
    y, s = _check(labels, scores)
    _both_classes(y)
    thresholds = np.append(np.unique(s), np.inf)
    bona, spoof = np.sort(s[y == 0]), np.sort(s[y == 1])
    # FPR(t) = P(bona >= t), FNR(t) = P(spoof < t)
    fpr = 1.0 - np.searchsorted(bona, thresholds, side="left") / bona.size
    fnr = np.searchsorted(spoof, thresholds, side="left") / spoof.size
    return thresholds, fpr, fnr


def eer(labels, scores) -> tuple[float, float]:
    """(equal error rate, threshold at it).

    FNR rises and FPR falls with the threshold; the EER is where the two cross, linearly
    interpolated between the neighbouring distinct scores. The threshold returned lies
    between those two scores, so on these data it realises the rates of the upper one.
    """
    t, fpr, fnr = error_rates(labels, scores)
    k = int(np.argmax(fnr >= fpr))  # first threshold where misses reach false alarms
    if k == 0:
        return float(fpr[0]), float(t[0])
    d0, d1 = fpr[k - 1] - fnr[k - 1], fpr[k] - fnr[k]  # d0 > 0 >= d1
    w = d0 / (d0 - d1)
    rate = fpr[k - 1] + w * (fpr[k] - fpr[k - 1])
    upper = t[k] if np.isfinite(t[k]) else t[k - 1] + 1e-6
    return float(rate), float((t[k - 1] + upper) / 2)


def threshold_at_fpr(labels, scores, target_fpr: float) -> float:
    """Lowest threshold whose false-alarm rate on these data is at most `target_fpr`."""
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError("target FPR must be in [0, 1]")
    t, fpr, _ = error_rates(labels, scores)
    k = int(np.argmax(fpr <= target_fpr))
    if k == 0:
        return float(t[0])
    upper = t[k] if np.isfinite(t[k]) else t[k - 1] + 1e-6
    return float((t[k - 1] + upper) / 2)


# ASVspoof 5's detection cost (Wang et al. 2024, the evaluation package's
# calculate_minDCF_EER_CLLR_actDCF): prior of a spoof 0.05, cost 1 for rejecting bona fide
# speech (a miss, in its bona-fide-positive terms) and 10 for accepting a spoof.
ASVSPOOF5_DCF = {"p_spoof": 0.05, "c_miss": 1.0, "c_fa": 10.0}


def _dcf(p_miss, p_fa, p_spoof: float, c_miss: float, c_fa: float):
    """Normalised DCF: divided by the cost of the best decision without a detector."""
    cost = c_miss * (1 - p_spoof) * np.asarray(p_miss) + c_fa * p_spoof * np.asarray(p_fa)
    return cost / min(c_miss * (1 - p_spoof), c_fa * p_spoof)


def min_dcf(labels, scores, p_spoof: float = 0.05, c_miss: float = 1.0,
            c_fa: float = 10.0) -> float:
    """The lowest normalised DCF over every threshold (scores rising with P(spoof)).

    As the ASVspoof 5 package computes it: scores sorted in bona-fide-positive order
    (stable, bona fide first among ties, a pessimistic order inside tied groups), and the
    cost evaluated after rejecting the k lowest, for every k."""
    y, s = _check(labels, scores)
    _both_classes(y)
    bona_positive = np.concatenate([-s[y == 0], -s[y == 1]])
    is_bona = np.concatenate([np.ones((y == 0).sum()), np.zeros((y == 1).sum())])
    order = np.argsort(bona_positive, kind="mergesort")
    rejected_bona = np.cumsum(is_bona[order])
    n_bona, n_spoof = is_bona.sum(), (1 - is_bona).sum()
    accepted_spoof = n_spoof - (np.arange(1, y.size + 1) - rejected_bona)
    p_miss = np.concatenate([[0.0], rejected_bona / n_bona])
    p_fa = np.concatenate([[1.0], accepted_spoof / n_spoof])
    return float(_dcf(p_miss, p_fa, p_spoof, c_miss, c_fa).min())


def act_dcf(labels, llrs, p_spoof: float = 0.05, c_miss: float = 1.0,
            c_fa: float = 10.0) -> float:
    """Normalised DCF of the Bayes decision on calibrated LLRs (ln p(x|spoof)/p(x|bona)):
    bona fide is accepted when its bona-fide-positive LLR, -llr, is at least
    -ln(c_miss (1 - p_spoof) / (c_fa p_spoof)), as the ASVspoof 5 package decides."""
    y, s = _check(labels, llrs)
    _both_classes(y)
    tau = -np.log(c_miss * (1 - p_spoof) / (c_fa * p_spoof))
    bona, spoof = -s[y == 0], -s[y == 1]
    p_miss = float((bona < tau).sum() / bona.size)
    p_fa = float((spoof >= tau).sum() / spoof.size)
    return float(_dcf(p_miss, p_fa, p_spoof, c_miss, c_fa))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half)."""
    y, s = _check(labels, scores)
    _both_classes(y)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n1, n0 = int(y.sum()), int((1 - y).sum())
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def confusion(labels, scores, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows are the true label (bona fide, spoof)."""
    y, s = _check(labels, scores)
    pred = (s >= threshold).astype(np.int64)
    m = np.zeros((2, 2), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def summary(labels, scores, threshold: float, llrs=None, speakers=None,
            resamples: int = 1000) -> dict:
    """Everything a report needs, JSON-ready. With both classes: EER and ROC AUC with 95%
    bootstrap intervals (by speaker when `speakers` has enough of them, runtime.bootstrap),
    minDCF (ASVspoof 5 costs) and minCllr; with calibrated `llrs` also actDCF and Cllr."""
    y, s = _check(labels, scores)
    m = confusion(y, s, threshold)
    out = {
        "n": int(y.size),
        "n_bona_fide": int((y == 0).sum()),
        "n_spoof": int((y == 1).sum()),
        "threshold": float(threshold),
        "accuracy": float(np.trace(m) / max(1, y.size)),
        "confusion": m.tolist(),
        "fpr": float(m[0, 1] / max(1, m[0].sum())),
        "fnr": float(m[1, 0] / max(1, m[1].sum())),
    }
    if y.min() != y.max():
        from runtime import bootstrap
        from runtime.calibration import cllr, min_cllr

        out["eer"], out["eer_threshold"] = eer(y, s)
        out["roc_auc"] = roc_auc(y, s)
        if resamples:
            method = bootstrap.choose_method(y, speakers, resamples)
            out["eer_ci95"] = bootstrap.interval(y, s, lambda a, b: eer(a, b)[0], speakers,
                                                 method)
            out["roc_auc_ci95"] = bootstrap.interval(y, s, roc_auc, speakers, method)
            out["interval"] = method.describe()
        out["min_dcf"] = min_dcf(y, s, **ASVSPOOF5_DCF)
        out["min_cllr"] = min_cllr(y, s)
        if llrs is not None:
            _, llr = _check(y, llrs)
            out["act_dcf"] = act_dcf(y, llr, **ASVSPOOF5_DCF)
            out["cllr"] = cllr(y, llr)
    return out


def group_eers(labels, scores, groups, llrs=None) -> dict[str, dict]:
    """EER (and minDCF; actDCF and Cllr with `llrs`) per value of a group column.

    A group with both classes is scored on its own rows. A group with spoofs only (an
    attack) is scored against all bona fide rows, as ASVspoof reports per-attack EER. A
    group with bona fide only has no EER of its own and is left out.
    """
    y, s = _check(labels, scores)
    llr = None if llrs is None else np.asarray(llrs, dtype=np.float64).ravel()
    g = np.asarray(groups).astype(str).ravel()
    out = {}
    for value in sorted(set(g.tolist())):
        rows = g == value
        if y[rows].min() == y[rows].max() == 0:
            continue
        if y[rows].min() == y[rows].max() == 1:
            rows = rows | (y == 0)
        if y[rows].min() == y[rows].max():
            continue
        rate, _ = eer(y[rows], s[rows])
        out[value] = {"eer": rate, "n": int((g == value).sum()),
                      "min_dcf": min_dcf(y[rows], s[rows], **ASVSPOOF5_DCF)}
        if llr is not None:
            from runtime.calibration import cllr

            out[value]["act_dcf"] = act_dcf(y[rows], llr[rows], **ASVSPOOF5_DCF)
            out[value]["cllr"] = cllr(y[rows], llr[rows])
    return out


def format_report(result: dict, groups: dict[str, dict] | None = None,
                  indent: str = "  ") -> list[str]:
    """Text lines for a summary() result and its per-group EERs (trainer and dfa-eval)."""
    m = result["confusion"]
    lines = [f"{indent}files           {result['n']} ({result['n_bona_fide']} bona-fide, "
             f"{result['n_spoof']} spoof)"]
    if "eer" in result:
        eer_ci = auc_ci = ""
        if "eer_ci95" in result:
            lo, hi = result["eer_ci95"]
            eer_ci = f" [{100 * lo:.2f}, {100 * hi:.2f}]"
            lo, hi = result["roc_auc_ci95"]
            auc_ci = f" [{lo:.4f}, {hi:.4f}]"
        lines += [f"{indent}EER             {100 * result['eer']:.2f}%{eer_ci}",
                  f"{indent}ROC AUC         {result['roc_auc']:.4f}{auc_ci}"]
        if "interval" in result:
            lines.append(f"{indent}intervals       {result['interval']}")
        if "min_dcf" in result:
            act = (f", actDCF {result['act_dcf']:.4f}" if "act_dcf" in result
                   else " (actDCF needs a calibrated model)")
            lines.append(f"{indent}DCF             minDCF {result['min_dcf']:.4f}{act} "
                         "(ASVspoof 5 costs)")
            cal = (f"Cllr {result['cllr']:.3f}, " if "cllr" in result else "")
            lines.append(f"{indent}Cllr            {cal}minCllr {result['min_cllr']:.3f} bits")
    lines += [
        f"{indent}accuracy        {100 * result['accuracy']:.2f}% at threshold "
        f"{result['threshold']:.4f} (FPR {100 * result['fpr']:.2f}%, "
        f"FNR {100 * result['fnr']:.2f}%)",
        f"{indent}confusion       true\\pred  bona-fide  spoof",
        f"{indent}                bona-fide  {m[0][0]:>9}  {m[0][1]:>5}",
        f"{indent}                spoof      {m[1][0]:>9}  {m[1][1]:>5}",
    ]
    for name, values in (groups or {}).items():
        if values:
            parts = ", ".join(f"{k} {100 * v['eer']:.2f}%" for k, v in values.items())
            lines.append(f"{indent}EER by {name}: {parts}")
    return lines
