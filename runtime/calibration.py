"""Scores as evidence: log-likelihood ratios, their calibration, and how good they are.

dfa's scores are P(spoof). A log-likelihood ratio (LLR) says how much more likely the audio
is under "spoof" than under "bona fide", independent of how common spoofs are:

    llr = ln p(x | spoof) / p(x | bona fide)        (natural log; > 0 favours spoof)

A model's raw logit(P(spoof)) is not a calibrated LLR. The trainer fits an affine map
llr = scale * logit(P(spoof)) + offset on the validation split (logistic regression with
equal class weights, Platt's smoothed targets so that separable data still give a finite
fit) and stores it in the model's metadata. With it a user derives the decision threshold
for their own prior and costs (threshold_for_prior) without retraining.

Cllr (Brümmer and du Preez 2006) measures LLRs: 0 bits is perfect, 1 bit is a system that
always says llr = 0. minCllr is the Cllr after the best monotone recalibration (PAV), so
Cllr - minCllr is the part lost to calibration. The conventions match the ASVspoof 5
evaluation package (calculate_CLLR) and Brümmer's pyllr (min_cllr); tests check the
numbers against theirs.
"""

from __future__ import annotations

import math

import numpy as np

LN2 = math.log(2.0)
# P(spoof) is clipped this far from 0 and 1 before its logit (a float32 sigmoid saturates).
_EPS = 1e-12


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def softplus(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.logaddexp(0.0, x)


def to_llr(scores, calibration: dict | None) -> np.ndarray:
    """P(spoof) scores -> LLRs with a model's calibration (scale, offset)."""
    if not calibration:
        raise ValueError("no calibration: the model stores none")
    return calibration["scale"] * logit(scores) + calibration["offset"]


def fit_calibration(labels, scores, iterations: int = 100) -> dict:
    """Affine calibration of logit(P(spoof)) to an LLR, fitted by Newton's method on the
    class-balanced logistic loss with Platt's targets ((n+1)/(n+2) and 1/(n+2))."""
    y = np.asarray(labels).astype(np.int64).ravel()
    x = logit(scores)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("calibration needs bona fide and spoof files")
    t = np.where(y == 1, (n1 + 1.0) / (n1 + 2.0), 1.0 / (n0 + 2.0))
    w = np.where(y == 1, 0.5 / n1, 0.5 / n0)  # equal class weights: the output is an LLR
    design = np.stack([x, np.ones_like(x)], axis=1)

    def loss(a: float, b: float) -> float:  # weighted cross-entropy, overflow-free
        z = a * x + b
        return float((w * (t * softplus(-z) + (1 - t) * softplus(z))).sum())

    # Newton's method with backtracking: each step at least halves until the loss falls,
    # so a few well-separated files cannot throw it off (a plain Newton step can).
    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * x + b, -500, 500)))
        grad = design.T @ (w * (p - t))
        hess = (design * (w * p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10:
            na, nb = a - scale * step[0], b - scale * step[1]
            new = loss(na, nb)
            if new <= current:
                break
            scale /= 2
        else:
            break  # no descent left: converged
        moved = max(abs(na - a), abs(nb - b))
        a, b, current = na, nb, new
        if moved < 1e-10:
            break
    return {"method": "logistic regression of the label on logit(P(spoof)), equal class "
                      "weights, Platt targets", "scale": float(a), "offset": float(b),
            "files": int(y.size)}


def threshold_for_prior(calibration: dict, prior: float, cost_false_spoof: float = 1.0,
                        cost_missed_spoof: float = 1.0) -> float:
    """The P(spoof) threshold of the Bayes decision for a stated P(spoof) prior and costs:
    call spoof when llr >= ln((1 - prior) / prior * cost_false_spoof / cost_missed_spoof)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be strictly between 0 and 1, got {prior}")
    if cost_false_spoof <= 0 or cost_missed_spoof <= 0:
        raise ValueError("costs must be positive")
    scale, offset = calibration["scale"], calibration["offset"]
    if not scale > 0:
        raise ValueError(f"calibration scale {scale} is not positive: the model's scores "
                         "do not rank spoofs above bona fide on its validation split")
    theta = math.log((1.0 - prior) / prior * cost_false_spoof / cost_missed_spoof)
    z = (theta - offset) / scale
    return float(1.0 / (1.0 + math.exp(-z))) if z > -700 else 0.0


def cllr(labels, llrs) -> float:
    """Cllr in bits of spoof-vs-bona-fide LLRs (natural log)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    llr = np.asarray(llrs, dtype=np.float64).ravel()
    bona, spoof = llr[y == 0], llr[y == 1]
    if bona.size == 0 or spoof.size == 0:
        raise ValueError("Cllr needs bona fide and spoof files")
    return float((softplus(bona).mean() + softplus(-spoof).mean()) / (2.0 * LN2))


def pav_llrs(labels, scores) -> np.ndarray:
    """The optimal monotone (non-decreasing in score) LLRs for these labels: pool adjacent
    violators over the scores sorted ascending, tied scores pooled first (order-free)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    values, inverse = np.unique(s, return_inverse=True)
    spoof = np.bincount(inverse, weights=y, minlength=values.size)
    total = np.bincount(inverse, minlength=values.size).astype(np.float64)
    # Blocks on a stack: (spoof count, file count, number of distinct scores in it).
    blocks: list[list[float]] = []
    for k, n in zip(spoof, total, strict=True):
        blocks.append([k, n, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            k2, n2, m2 = blocks.pop()
            blocks[-1][0] += k2
            blocks[-1][1] += n2
            blocks[-1][2] += m2
    p = np.concatenate([np.full(int(m), k / n) for k, n, m in blocks])
    n1, n0 = y.sum(), y.size - y.sum()
    with np.errstate(divide="ignore"):
        post = np.log(p) - np.log1p(-p)
    return (post - math.log(n1 / n0))[inverse]


def min_cllr(labels, scores) -> float:
    """Cllr after the best monotone recalibration of `scores` (any scores that rise with
    P(spoof)): a bin's infinite LLR costs nothing for the class it is certain of."""
    y = np.asarray(labels).astype(np.int64).ravel()
    llr = pav_llrs(y, scores)
    bona, spoof = llr[y == 0], llr[y == 1]
    if bona.size == 0 or spoof.size == 0:
        raise ValueError("minCllr needs bona fide and spoof files")
    with np.errstate(over="ignore"):
        cost_bona = np.where(np.isneginf(bona), 0.0, softplus(bona))
        cost_spoof = np.where(np.isposinf(spoof), 0.0, softplus(-spoof))
    return float((cost_bona.mean() + cost_spoof.mean()) / (2.0 * LN2))
