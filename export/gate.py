"""The precision gate: is the int8 (or fp16) model good enough to ship in place of the fp32
one? Judged on what users lose (EER, by a paired bootstrap) and on files whose verdict is not
a coin flip, not on how many labels flip."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from runtime.bootstrap import Method, resample_indices

GATE_RULE = (
    "{0} is refused when (a) on labelled files, the upper end of the paired-bootstrap 95% "
    "interval of the EER change ({0} minus float) exceeds max_eer_increase, or (b) on "
    "decisive files (float score more than margin from the threshold), {0} and float "
    "labels agree on fewer than min_agreement of them; without labels only (b) applies"
)


@dataclass
class PrecisionGate:
    """What the `candidate` model (int8 or fp16) costs compared with the float (fp32) one
    on the same files, and the verdict. Written for int8, which loses the most; fp16 is
    judged by the same rule. to_dict() names the candidate's fields after it (eer_int8).

    The rule (GATE_RULE) judges what users lose, not how many labels flip:

    (a) EER change. Files are resampled with replacement within each class (1000 times,
        fixed seed; the same indices for both models, so each resample is a paired
        comparison) and the EER and ROC AUC changes recorded. The gate fails when the
        upper end of the 95% interval of the EER change exceeds max_eer_increase (ROC AUC
        is reported, not gated). The bound, not the point estimate: int8 replaces a float
        model that was checked, so int8 has to show that it costs at most the tolerance
        (a non-inferiority test); a point estimate of zero on a few hundred files does
        not rule out a loss larger than the tolerance on the audio they stand for.
        Because the comparison is paired, an int8 model that ranks the files as float
        does has an interval of [0, 0] however few the files (e.g. fp32 and int8 both at
        0% EER); the width grows with how many files int8 reorders near the EER point.
        Few files: each file of the smaller class moves the EER by 1/n, so with n under
        about 2 / max_eer_increase (200 files for 1 point) one or two reordered files push
        the bound past the tolerance and the gate refuses although the loss may be nil;
        the report then says the files are too few to resolve the tolerance. Remedies:
        more labelled files (--agreement-files, default 2000, about 1000 per class:
        enough for a 1-point check), a larger --max-eer-increase, or --force.
    (b) Decisive agreement. A file whose float score lies within `margin` of the
        threshold flips label under tiny score changes, which is noise, not loss; files
        outside that band must keep their label at >= min_agreement. Agreement over all
        files and the band's size are reported, not gated. Without labels (no meta.csv)
        only (b) applies; with no file outside the band and no labels there is nothing to
        judge on, and the gate fails.
    """

    passed: bool
    candidate: str  # "int8" or "fp16"
    reasons: list[str]  # why it failed; empty when it passed
    notes: list[str]  # what the reader should know (skipped checks, coarse EER steps)
    files: int
    label_agreement: float  # over all files, reported only
    margin: float
    band_files: int  # float score within margin of the threshold
    decisive_files: int
    decisive_agreement: float | None
    min_agreement: float
    labelled_files: int  # 0 when (a) was not measured
    max_eer_increase: float
    eer_fp32: float | None = None
    eer_candidate: float | None = None
    eer_change: float | None = None
    eer_change_ci95: list[float] | None = None
    auc_fp32: float | None = None
    auc_candidate: float | None = None
    auc_change: float | None = None
    auc_change_ci95: list[float] | None = None
    bootstrap_resamples: int = 0
    rule: str = ""

    def __post_init__(self):
        self.rule = self.rule or GATE_RULE.format(self.candidate)

    def to_dict(self) -> dict:
        return {k.replace("_candidate", f"_{self.candidate}"): v
                for k, v in asdict(self).items()}


def precision_gate(fp32_scores, candidate_scores, threshold: float, labels=None, *,
                   candidate: str, margin: float = 0.05, min_agreement: float = 0.99,
                   max_eer_increase: float = 0.01, resamples: int = 1000,
                   seed: int = 0) -> PrecisionGate:
    """Judge the `candidate` model's file scores (int8 or fp16) against the float scores of
    the same files (see PrecisionGate)."""
    from runtime import metrics as M

    a = np.asarray(fp32_scores, dtype=np.float64).ravel()
    b = np.asarray(candidate_scores, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        raise ValueError(f"need the same non-zero number of scores, got {a.size} and {b.size}")
    y = None if labels is None else np.asarray(labels).astype(np.int64).ravel()
    if y is not None and y.size != a.size:
        raise ValueError(f"{y.size} labels for {a.size} scores")
    reasons: list[str] = []
    notes: list[str] = []
    same = (a >= threshold) == (b >= threshold)
    decisive = np.abs(a - threshold) > margin
    n_decisive = int(decisive.sum())
    gate = PrecisionGate(
        passed=False, candidate=candidate, reasons=reasons, notes=notes, files=int(a.size),
        label_agreement=float(same.mean()), margin=float(margin),
        band_files=int(a.size - n_decisive), decisive_files=n_decisive,
        decisive_agreement=float(same[decisive].mean()) if n_decisive else None,
        min_agreement=float(min_agreement), labelled_files=0,
        max_eer_increase=float(max_eer_increase),
    )
    bad = int((~np.isfinite(a)).sum() + (~np.isfinite(b)).sum())
    if bad:
        reasons.append(f"{bad} scores not finite")
        return gate

    # (b) labels of the files that are not a coin flip
    if n_decisive and gate.decisive_agreement < min_agreement:
        reasons.append(f"{int((~same[decisive]).sum())} of {n_decisive} decisive files "
                       f"change label ({100 * gate.decisive_agreement:.2f}% agree < "
                       f"--min-agreement {100 * min_agreement:g}%)")

    # (a) the EER change, paired bootstrap within each class
    if y is None:
        notes.append("no labels (no meta.csv): EER not measured; only decisive-file "
                     "agreement is checked")
    elif y.min() == y.max():
        notes.append("labels of one class only: EER not measured; only decisive-file "
                     "agreement is checked")
    else:
        gate.labelled_files = int(y.size)
        gate.eer_fp32, gate.eer_candidate = M.eer(y, a)[0], M.eer(y, b)[0]
        gate.auc_fp32, gate.auc_candidate = M.roc_auc(y, a), M.roc_auc(y, b)
        gate.eer_change = gate.eer_candidate - gate.eer_fp32
        gate.auc_change = gate.auc_candidate - gate.auc_fp32
        neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        d_eer, d_auc = np.empty(resamples), np.empty(resamples)
        by_file = Method("file", resamples, int(y.size))  # the same files for both models
        for i, idx in enumerate(resample_indices(y, method=by_file, seed=seed)):
            yi, ai, bi = y[idx], a[idx], b[idx]
            d_eer[i] = M.eer(yi, bi)[0] - M.eer(yi, ai)[0]
            d_auc[i] = M.roc_auc(yi, bi) - M.roc_auc(yi, ai)
        gate.bootstrap_resamples = int(resamples)
        gate.eer_change_ci95 = [float(v) for v in np.percentile(d_eer, [2.5, 97.5])]
        gate.auc_change_ci95 = [float(v) for v in np.percentile(d_auc, [2.5, 97.5])]
        upper = gate.eer_change_ci95[1]
        smaller = int(min(neg.size, pos.size))
        if upper > max_eer_increase + 1e-12:
            few = "; too few files to resolve less" if 2.0 / smaller > max_eer_increase \
                else ""
            reasons.append(f"EER may rise by up to {100 * upper:+.2f} points (95% upper "
                           f"end > --max-eer-increase {100 * max_eer_increase:g}{few})")
        if 2.0 / smaller > max_eer_increase:
            notes.append(f"only {smaller} labelled files of the smaller class: each moves "
                         f"the EER by {100 / smaller:.2f} points, too coarse for a "
                         f"{100 * max_eer_increase:g}-point tolerance, so the EER check "
                         f"passes only if {candidate} reorders (almost) none of them; use more "
                         "labelled files")
    if y is None or y.min() == y.max():
        if not n_decisive:
            reasons.append(f"nothing to judge: no labels, every file within --margin "
                           f"{margin:g} of the threshold")
    elif not n_decisive:
        notes.append(f"every file scores within {margin:g} of the threshold: decisive "
                     "agreement not measured")
    gate.passed = not reasons
    return gate


def int8_gate(fp32_scores, int8_scores, threshold: float, labels=None, **options
              ) -> PrecisionGate:
    """precision_gate for an int8 model."""
    return precision_gate(fp32_scores, int8_scores, threshold, labels, candidate="int8",
                          **options)
