"""The field's metrics (minDCF, actDCF, Cllr, minCllr), calibration to LLRs and bootstrap
intervals: against published reference numbers and against what they must mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime import bootstrap as B
from runtime import calibration as C
from runtime import metrics as M


def reference_scores():
    """The fixed score file on which the reference implementations were run: 200 bona fide
    ~ N(2, 1.5) and 200 spoof ~ N(-2, 2) bona-fide-positive LLRs (numpy seed 0), with ties
    across and within classes and one pair exactly on actDCF's threshold -ln 1.9."""
    rng = np.random.default_rng(0)
    bon = rng.normal(2.0, 1.5, 200)
    spf = rng.normal(-2.0, 2.0, 200)
    spf[0:4] = bon[0:4]
    bon[5] = bon[4]
    bon[6] = 0.0
    spf[4:7] = 0.0
    t = -np.log(1.9)
    bon[7] = t
    spf[7] = t
    labels = np.r_[np.zeros(200), np.ones(200)]
    return labels, -np.r_[bon, spf]  # dfa's orientation: LLR in favour of spoof


def test_metrics_equal_the_reference_implementations():
    """Numbers from the ASVspoof 5 evaluation package (asvspoof-challenge/asvspoof5 @
    fe23d30, evaluation-package/calculate_modules.py: compute_mindcf, compute_actDCF,
    calculate_CLLR with Pspoof 0.05, Cmiss 1, Cfa 10; its evaluation.py --m t1 prints the
    same) and Brümmer's pyllr (bsxfan/PYLLR @ 442b10b, pyllr/cllr.py: min_cllr), run
    unmodified on this score file."""
    y, llr = reference_scores()
    assert M.min_dcf(y, llr, **M.ASVSPOOF5_DCF) == pytest.approx(0.2755, abs=1e-12)
    assert M.act_dcf(y, llr, **M.ASVSPOOF5_DCF) == pytest.approx(0.331, abs=1e-12)
    assert C.cllr(y, llr) == pytest.approx(0.4660459171781615, abs=1e-12)
    assert C.min_cllr(y, llr) == pytest.approx(0.4027516043043484, abs=1e-12)
    assert M.eer(y, llr)[0] == pytest.approx(0.135, abs=1e-12)  # theirs: 0.135 too


def test_threshold_free_metrics_do_not_depend_on_the_score_scale():
    y, llr = reference_scores()
    p = 1 / (1 + np.exp(-llr))  # P(spoof) ranks files as the LLR does
    assert M.min_dcf(y, p) == pytest.approx(M.min_dcf(y, llr))
    assert C.min_cllr(y, p) == pytest.approx(C.min_cllr(y, llr))
    assert C.min_cllr(y, llr) <= C.cllr(y, llr)


def test_perfect_and_useless_llrs():
    y = np.r_[np.zeros(50), np.ones(50)]
    assert C.cllr(y, np.where(y == 1, 30.0, -30.0)) < 1e-10
    assert C.cllr(y, np.zeros(100)) == pytest.approx(1.0)  # "always llr = 0" is 1 bit
    assert C.min_cllr(y, np.where(y == 1, 0.9, 0.1)) == 0.0
    assert M.min_dcf(y, np.where(y == 1, 0.9, 0.1)) == 0.0
    assert M.min_dcf(y, np.full(100, 0.5)) == pytest.approx(1.0)  # no better than no detector


def gaussian_scores(n=20000, seed=1):
    """x | spoof ~ N(1, 1), x | bona ~ N(-1, 1): the true LLR is 2x. The 'model' reports
    P(spoof) = sigmoid(3x + 1): it ranks perfectly well but is overconfident and biased."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n), np.ones(n)]
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    return y, 1 / (1 + np.exp(-(3 * x + 1))), 2 * x


def test_calibration_recovers_the_true_llr():
    y, p, true_llr = gaussian_scores()
    cal = C.fit_calibration(y, p)
    assert cal["scale"] == pytest.approx(2 / 3, abs=0.03)
    assert cal["offset"] == pytest.approx(-2 / 3, abs=0.05)
    llr = C.to_llr(p, cal)
    assert np.abs(llr - true_llr).max() < 0.3
    assert C.cllr(y, llr) < C.cllr(y, C.logit(p)) - 0.05
    assert C.cllr(y, llr) == pytest.approx(C.min_cllr(y, p), abs=0.01)


@pytest.mark.parametrize("y, p", [
    (np.r_[np.zeros(30), np.ones(30)],
     np.r_[np.linspace(0.01, 0.3, 30), np.linspace(0.7, 0.99, 30)]),
    # A tiny run's validation split: a plain Newton step diverged to scale -2e8 on it.
    (np.r_[np.zeros(6), np.ones(6)],
     [0.026266, 0.03314, 0.056266, 0.08183, 0.134325, 0.414971,
      0.931097, 0.984393, 0.986812, 0.988261, 0.991298, 0.996152]),
])
def test_calibration_of_separable_scores_is_finite_and_increasing(y, p):
    cal = C.fit_calibration(y, p)
    assert math.isfinite(cal["scale"]) and math.isfinite(cal["offset"]) and cal["scale"] > 0
    llr = C.to_llr(p, cal)
    assert (llr[np.asarray(y) == 1].min() > 0) and (llr[np.asarray(y) == 0].max() < 0)


@pytest.mark.parametrize("prior, c_fs, c_ms", [(0.5, 1, 1), (0.05, 1, 1), (0.5, 10, 1),
                                               (0.9, 1, 3)])
def test_threshold_for_prior_is_the_bayes_decision(prior, c_fs, c_ms):
    y, p, _ = gaussian_scores(n=2000)
    cal = C.fit_calibration(y, p)
    t = C.threshold_for_prior(cal, prior, c_fs, c_ms)
    llr = C.to_llr(p, cal)
    theta = math.log((1 - prior) / prior * c_fs / c_ms)
    away = np.abs(llr - theta) > 1e-6  # files on the threshold itself may round either way
    assert np.array_equal((p >= t)[away], (llr >= theta)[away])
    # The Bayes threshold has the lowest expected cost at that prior on calibrated data.
    def cost(thr):
        fa = ((p >= thr) & (y == 0)).mean() * 2
        miss = ((p < thr) & (y == 1)).mean() * 2
        return (1 - prior) * c_fs * fa + prior * c_ms * miss
    others = np.linspace(0.01, 0.99, 99)
    assert cost(t) <= min(cost(o) for o in others) + 0.01


def test_threshold_for_prior_refuses_nonsense():
    with pytest.raises(ValueError, match="prior"):
        C.threshold_for_prior({"scale": 1.0, "offset": 0.0}, 1.0)
    with pytest.raises(ValueError, match="costs"):
        C.threshold_for_prior({"scale": 1.0, "offset": 0.0}, 0.5, 0.0, 1.0)


# ------------------------------------------------------------------------ intervals


def speaker_data(n_speakers=30, per=10, spread=1.0, seed=2):
    """Spoof scores with a per-speaker offset (some voices are faked convincingly): files
    of one speaker are not independent."""
    rng = np.random.default_rng(seed)
    y, s, spk = [], [], []
    for i in range(n_speakers):
        offset = rng.normal(0, spread)
        for j in range(per):
            label = j % 2
            y.append(label)
            s.append(rng.normal(1.0 if label else -1.0, 1.0) + (offset if label else 0.0))
            spk.append(f"spk{i}")
    return np.array(y), np.array(s), np.array(spk)


def test_interval_contains_the_estimate_and_repeats():
    y, s, spk = speaker_data()
    e = M.eer(y, s)[0]
    ci = B.interval(y, s, lambda a, b: M.eer(a, b)[0], spk)
    assert ci[0] <= e <= ci[1] and ci[1] - ci[0] > 0.01
    assert B.interval(y, s, lambda a, b: M.eer(a, b)[0], spk) == ci


def test_speaker_bootstrap_is_wider_when_speakers_matter():
    y, s, spk = speaker_data(spread=1.5)
    by_speaker = B.choose_method(y, spk)
    by_file = B.choose_method(y, None)
    assert by_speaker.unit == "speaker" and by_file.unit == "file"
    eer = lambda a, b: M.eer(a, b)[0]  # noqa: E731
    lo_s, hi_s = B.interval(y, s, eer, spk, by_speaker)
    lo_f, hi_f = B.interval(y, s, eer, spk, by_file)
    assert hi_s - lo_s > 1.3 * (hi_f - lo_f)


def test_few_speakers_fall_back_to_files():
    y, s, spk = speaker_data(n_speakers=4)
    method = B.choose_method(y, spk)
    assert method.unit == "file" and "by file" in method.describe()


def test_paired_interval():
    y, s, spk = speaker_data()
    same = B.paired_interval(y, s, s.copy(), M.roc_auc, spk)
    assert same == [0.0, 0.0]
    noisy = s + np.random.default_rng(5).normal(0, 3.0, s.size)  # clearly worse
    lo, hi = B.paired_interval(y, s, noisy, lambda a, b: M.eer(a, b)[0], spk)
    assert lo > 0  # the worse model's EER is higher in (nearly) every resample


def test_summary_reports_intervals_and_the_field_metrics():
    y, s, spk = speaker_data()
    p = 1 / (1 + np.exp(-s))
    out = M.summary(y, p, 0.5, llrs=s, speakers=spk)
    for key in ("eer_ci95", "roc_auc_ci95", "min_dcf", "act_dcf", "cllr", "min_cllr"):
        assert key in out
    assert "by speaker (30 speakers)" in out["interval"]
    lines = "\n".join(M.format_report(out))
    lo, hi = out["eer_ci95"]
    assert f"EER             {100 * out['eer']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]" in lines
    assert "minDCF" in lines and "actDCF" in lines and "Cllr" in lines
    without = M.summary(y, p, 0.5)
    assert "act_dcf" not in without and "cllr" not in without
    assert "actDCF needs a calibrated model" in "\n".join(M.format_report(without))
