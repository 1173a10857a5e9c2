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


def summary(labels, scores, threshold: float) -> dict:
    """Everything a report needs, JSON-ready."""
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
        out["eer"], out["eer_threshold"] = eer(y, s)
        out["roc_auc"] = roc_auc(y, s)
    return out


def group_eers(labels, scores, groups) -> dict[str, dict]:
    """EER per value of a group column (e.g. attack).

    A group with both classes is scored on its own rows. A group with spoofs only (an
    attack) is scored against all bona fide rows, as ASVspoof reports per-attack EER. A
    group with bona fide only has no EER of its own and is left out.
    """
    y, s = _check(labels, scores)
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
        out[value] = {"eer": rate, "n": int((g == value).sum())}
    return out


def format_report(result: dict, groups: dict[str, dict] | None = None,
                  indent: str = "  ") -> list[str]:
    """Text lines for a summary() result and its per-group EERs (trainer and dfa-eval)."""
    m = result["confusion"]
    lines = [f"{indent}files           {result['n']} ({result['n_bona_fide']} bona-fide, "
             f"{result['n_spoof']} spoof)"]
    if "eer" in result:
        lines += [f"{indent}EER             {100 * result['eer']:.2f}%",
                  f"{indent}ROC AUC         {result['roc_auc']:.4f}"]
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
