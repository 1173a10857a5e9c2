"""--loss oc-softmax: the one-class loss of Zhang et al. (2021) on a cosine head, trained,
recorded in model.json and exported like any other dfa model."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from tests.datasets import FAST_TRAIN  # noqa: E402
from trainer.loop import make_loss  # noqa: E402
from trainer.model import OC_ALPHA, OC_M_FAKE, OC_M_REAL, create_model, network  # noqa: E402

runner = CliRunner()


def zhang_loss(cos, y, spoof_weight=1.0):
    """OC-Softmax as its authors' code writes it (AIR-ASVspoof loss.py, label 0 = bona fide):
    softplus(alpha * (m_real - cos)) for bona fide, softplus(alpha * (cos - m_fake)) for
    spoofs; summed here, spoofs weighted as class balance weights them."""
    sp = torch.nn.functional.softplus
    return (sp(OC_ALPHA * (OC_M_REAL - cos)) * (1 - y)
            + spoof_weight * sp(OC_ALPHA * (cos - OC_M_FAKE)) * y).sum()


def export_float_and_int8(model_pth, folder, calibration):
    """dfa-export to fp32 (every check passing) and to int8 (calibrated on `calibration`,
    gate loosened: a 2-epoch model's EER is not the point)."""
    from export.cli import app as export_app

    e = runner.invoke(export_app, [str(model_pth), str(folder / "oc.onnx")])
    assert e.exit_code == 0, e.stderr + e.stdout
    assert "end to end" in e.stdout and "FAIL" not in e.stdout
    e = runner.invoke(export_app, [str(a) for a in (
        model_pth, folder / "oc.int8.onnx", "--quantize", "int8", "--calibration",
        calibration, "--calibration-files", "20", "--agreement-files", "60",
        "--min-agreement", "0.5", "--max-eer-increase", "1.0")])
    assert e.exit_code == 0, e.stderr + e.stdout
    assert "int8 quantization" in e.stdout and (folder / "oc.int8.onnx").is_file()


@pytest.mark.parametrize("balance", [False, True])
def test_the_loss_on_the_heads_logit_is_oc_softmax(balance):
    rng = np.random.default_rng(0)
    feats = torch.tensor(rng.normal(size=(64, 24)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 2, 64), dtype=torch.float32)
    y[:3] = 0  # both classes, more bona fide: class balance weights spoofs up
    head = create_model(*network("tiny", "oc-softmax")).fc
    head = type(head)(24)
    logits = head(feats).reshape(-1)
    cos = torch.nn.functional.cosine_similarity(feats, head.weight, dim=1)
    labels = y.int().tolist()
    weight = labels.count(0) / labels.count(1) if balance else 1.0
    got = make_loss(labels, balance, "oc-softmax")(logits, y)
    assert torch.allclose(got, zhang_loss(cos, y, weight), rtol=1e-5)
    # the logit is positive (spoof) exactly below the midpoint of the two margins
    assert torch.equal(logits > 0, cos < (OC_M_REAL + OC_M_FAKE) / 2)
    assert not torch.allclose(got, make_loss(labels, balance, "bce")(logits, y))


def test_cosine_head_scores_the_bona_fide_direction_lowest():
    head = create_model(*network("tiny", "oc-softmax")).fc
    w = head.weight.detach()
    with torch.no_grad():
        along, against = head(3.0 * w), head(-w)
    assert float(along) == pytest.approx(OC_ALPHA * ((OC_M_REAL + OC_M_FAKE) / 2 - 1), abs=1e-4)
    assert float(against) == pytest.approx(OC_ALPHA * ((OC_M_REAL + OC_M_FAKE) / 2 + 1),
                                           abs=1e-4)
    assert create_model(*network("tiny")).fc.__class__ is torch.nn.Linear


def test_oc_softmax_run_is_recorded_exported_and_kept_apart(
        itw_dataset, features_json, feature_cache, trained_run, tmp_path):
    from trainer.cli import app as train_app

    out = tmp_path / "oc"
    r = runner.invoke(train_app, [str(a) for a in (
        itw_dataset, "--out", out, "--epochs", "2", "--feature-config", features_json,
        "--cache-dir", feature_cache, "--loss", "oc-softmax", *FAST_TRAIN)])
    assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads((out / "run.json").read_text())["config"]["loss"] == "oc-softmax"
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch_kwargs"]["head"] == "cosine"
    assert meta["metrics"]["recipe"]["loss"] == "OC-Softmax (cosine head)"
    state = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    assert "fc.weight" in state and "fc.bias" not in state
    # dfa-export rebuilds the cosine head from model.json and checks torch vs onnxruntime,
    # and to int8 (F.normalize's ReduceL2 + Expand once broke the int8 pre-processing)
    export_float_and_int8(out / "model.pth", tmp_path, itw_dataset)
    # a BCE model is another network: fine-tuning one with OC-Softmax is refused by name
    r = runner.invoke(train_app, [str(a) for a in (
        itw_dataset, "--out", tmp_path / "ft", "--epochs", "1", "--feature-config",
        features_json, "--cache-dir", feature_cache, "--loss", "oc-softmax",
        "--init-from", trained_run[0], *FAST_TRAIN)])
    assert r.exit_code == 2 and "arch_kwargs" in r.stderr and "cosine" in r.stderr
    assert "use the --loss it was trained with" in r.stderr


def test_run_json_refuses_an_unknown_loss():
    from trainer.config import TrainConfig

    with pytest.raises(ValueError, match="'loss'"):
        TrainConfig.from_dict({"data_dir": "d", "out": "o", "loss": "hinge"})


def test_embedding_head_projects_signed_features_then_takes_the_cosine():
    from trainer.model import ArchError, check_arch

    name, kwargs = network("tiny", "oc-softmax", 16)
    assert kwargs["head"] == "cosine" and kwargs["embedding"] == 16
    fc = create_model(name, kwargs).fc
    assert isinstance(fc, torch.nn.Sequential) and isinstance(fc[0], torch.nn.Linear)
    assert fc[0].out_features == 16
    pooled = torch.relu(torch.randn(8, fc[0].in_features))  # timm's pooled: never negative
    with torch.no_grad():
        emb = fc[0](pooled)
        logits = fc(pooled).reshape(-1)
    assert (emb < 0).any()  # the projection is signed, unlike the pooled features
    cos = torch.nn.functional.cosine_similarity(emb, fc[1].weight, dim=1)
    expected = OC_ALPHA * ((OC_M_REAL + OC_M_FAKE) / 2 - cos)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert network("tiny", "bce", 0)[1].get("embedding") is None
    with pytest.raises(ArchError, match="embedding needs head 'cosine'"):
        check_arch(name, {"embedding": 16})
    with pytest.raises(ArchError, match="embedding must be"):
        check_arch(name, {"head": "cosine", "embedding": 1})


def test_oc_embedding_run_is_recorded_and_exported(itw_dataset, features_json,
                                                   feature_cache, tmp_path):
    from trainer.cli import app as train_app

    out = tmp_path / "oc-emb"
    r = runner.invoke(train_app, [str(a) for a in (
        itw_dataset, "--out", out, "--epochs", "1", "--feature-config", features_json,
        "--cache-dir", feature_cache, "--loss", "oc-softmax", "--oc-embedding", "16",
        *FAST_TRAIN)])
    assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads((out / "run.json").read_text())["config"]["oc_embedding"] == 16
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch_kwargs"]["head"] == "cosine" and meta["arch_kwargs"]["embedding"] == 16
    assert meta["metrics"]["recipe"]["loss"] == "OC-Softmax (cosine head on a 16-d projection)"
    state = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    assert {"fc.0.weight", "fc.0.bias", "fc.1.weight"} <= set(state)
    assert tuple(state["fc.0.weight"].shape)[0] == 16
    # the projection's Gemm goes through int8 pre-processing and quantization too
    export_float_and_int8(out / "model.pth", tmp_path, itw_dataset)


def test_oc_embedding_needs_oc_softmax(itw_dataset, tmp_path):
    from trainer.cli import app as train_app
    from trainer.config import TrainConfig

    for extra, said in ((("--oc-embedding", "64"), "add --loss oc-softmax"),
                        (("--loss", "oc-softmax", "--oc-embedding", "1"), "at least 2")):
        r = runner.invoke(train_app, [str(itw_dataset), "--out", str(tmp_path / "x"), *extra])
        assert r.exit_code == 2 and said in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="'oc_embedding' needs 'loss' oc-softmax"):
        TrainConfig.from_dict({"data_dir": "d", "out": "o", "oc_embedding": 8})
    with pytest.raises(ValueError, match="'oc_embedding' is 1"):
        TrainConfig.from_dict({"data_dir": "d", "out": "o", "loss": "oc-softmax",
                               "oc_embedding": 1})
