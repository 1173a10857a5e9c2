import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from runtime import metrics as M


def sklearn_eer(y, s):
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    k = np.nanargmin(np.abs(fnr - fpr))
    return (fpr[k] + fnr[k]) / 2


@pytest.mark.parametrize("seed", range(5))
def test_eer_and_auc_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = rng.normal(y * 1.2, 1.0)
    rate, t = M.eer(y, s)
    assert rate == pytest.approx(sklearn_eer(y, s), abs=0.01)
    assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # The threshold realises error rates close to the EER on the same data.
    m = M.confusion(y, s, t)
    fpr, fnr = m[0, 1] / m[0].sum(), m[1, 0] / m[1].sum()
    assert abs(fpr - rate) < 0.02 and abs(fnr - rate) < 0.02


def test_auc_with_ties_matches_scikit_learn():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    s = np.array([0.2, 0.5, 0.5, 0.9, 0.1, 0.5, 0.3, 0.3])
    assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 0, 1, 1, 1])
    good = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    rate, t = M.eer(y, good)
    assert rate == 0.0 and 0.3 < t <= 0.7
    assert M.roc_auc(y, good) == 1.0
    rate, _ = M.eer(y, 1 - good)
    assert rate == 1.0
    assert M.roc_auc(y, 1 - good) == 0.0


def test_known_eer_by_hand():
    # bona: 0.1 0.4 0.6 0.8 ; spoof: 0.3 0.5 0.7 0.9 -> at t in (0.5, 0.6]: FPR 2/4, FNR 2/4
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.4, 0.6, 0.8, 0.3, 0.5, 0.7, 0.9]
    rate, t = M.eer(y, s)
    assert rate == pytest.approx(0.5)
    assert 0.5 < t <= 0.6
    assert M.summary(y, s, 0.55)["accuracy"] == 0.5


def test_threshold_at_fpr():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(1000, int), np.ones(1000, int)]
    s = np.r_[rng.normal(0, 1, 1000), rng.normal(2, 1, 1000)]
    t = M.threshold_at_fpr(y, s, 0.01)
    m = M.confusion(y, s, t)
    assert m[0, 1] / 1000 <= 0.01
    assert M.confusion(y, s, t - 0.05)[0, 1] / 1000 > 0.005  # not needlessly strict


def test_confusion_and_summary():
    y = [0, 0, 1, 1, 1]
    s = [0.2, 0.7, 0.9, 0.4, 0.6]
    assert M.confusion(y, s, 0.5).tolist() == [[1, 1], [1, 2]]
    out = M.summary(y, s, 0.5)
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["fpr"] == 0.5 and out["fnr"] == pytest.approx(1 / 3)
    assert {"eer", "roc_auc", "eer_threshold"} <= set(out)
    assert "eer" not in M.summary([1, 1], [0.1, 0.9], 0.5)


def test_group_eers_per_attack():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.25, 0.15])
    g = np.array(["bona-fide"] * 4 + ["tts", "tts", "vc", "vc"])
    out = M.group_eers(y, s, g)
    assert set(out) == {"tts", "vc"}
    assert out["tts"]["eer"] == 0.0 and out["vc"]["eer"] > 0.3
    assert out["tts"]["n"] == 2


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="both bona fide and spoof"):
        M.eer([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="labels must be"):
        M.eer([0, 2], [0.2, 0.3])
    with pytest.raises(ValueError, match="2 labels but 3 scores"):
        M.roc_auc([0, 1], [0.1, 0.2, 0.3])
