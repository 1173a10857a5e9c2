"""dfa-train --ema: an exponential moving average of the weights is what validation scores,
what model.pth holds and what --resume restores."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from tests.datasets import FAST_TRAIN, interrupt_second_validation  # noqa: E402
from trainer.loop import EMA_WARMUP_POWER, make_ema  # noqa: E402
from trainer.model import create_model, network  # noqa: E402

runner = CliRunner()


def tiny():
    torch.manual_seed(0)
    return create_model(*network("tiny"))


def test_the_average_follows_the_warmed_up_decay():
    model = tiny()
    ema = make_ema(model, 0.999)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=1)  # the first step's decay is 0: the average is the weights
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, model.state_dict()[k]), k
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=101)
    d = 1 - 101 ** -EMA_WARMUP_POWER  # step 101 counts 100 steps after the first
    assert 0.96 < d < 0.97
    w = model.conv1.weight
    want = d * before["conv1.weight"] + (1 - d) * w
    assert torch.allclose(ema.module.conv1.weight, want, atol=1e-6)
    assert not torch.allclose(ema.module.conv1.weight, w)
    assert not torch.allclose(ema.module.conv1.weight, start["conv1.weight"])
    # capped at the decay asked for, however long the run
    assert ema.get_decay(10 ** 9) == 0.999


def test_the_average_of_a_frozen_model_is_frozen_on_its_own():
    from trainer.init import freeze

    model = tiny()
    freeze(model, "layer1")
    ema = make_ema(model, 0.99, "layer1")
    model.eval()
    ema.module.train()
    # the copy's train() must not reach the original (a shared closure did)
    assert not model.training and ema.module.training
    assert not ema.module.layer1.training and ema.module.layer2.training
    ema.module.eval()
    model.train()
    assert not ema.module.training and model.training and not model.layer1.training


def test_ema_run_keeps_the_average_and_resumes_to_it(itw_dataset, features_json,
                                                     feature_cache, tmp_path, monkeypatch):
    from export.cli import app as export_app
    from runtime.info_cli import app as info_app
    from trainer.cli import app as train_app

    args = ["--epochs", "3", "--feature-config", features_json, "--cache-dir", feature_cache,
            "--ema", "0.99", *FAST_TRAIN]
    ref = tmp_path / "ref"
    r = runner.invoke(train_app, [str(a) for a in (itw_dataset, "--out", ref, *args)])
    assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads((ref / "run.json").read_text())["config"]["ema"] == 0.99
    meta = json.loads((ref / "model.json").read_text())
    assert meta["metrics"]["recipe"]["ema"] == 0.99
    ckpt = torch.load(ref / "checkpoint.pt", weights_only=True)
    weights = torch.load(ref / "model.pth", weights_only=True)
    if meta["metrics"]["best_epoch"] == 3:  # model.pth is the last epoch's average
        assert all(torch.equal(weights[k], ckpt["ema"][k]) for k in weights)
    # the average is not the trained weights
    assert not torch.equal(ckpt["ema"]["conv1.weight"], ckpt["model"]["conv1.weight"])
    # exported like any model (torch vs onnxruntime checked), and its card says so
    e = runner.invoke(export_app, [str(ref / "model.pth"), str(tmp_path / "ema.onnx")])
    assert e.exit_code == 0 and "FAIL" not in e.stdout, e.stderr + e.stdout
    info = runner.invoke(info_app, [str(tmp_path / "ema.onnx")])
    assert "weights: moving average (decay 0.99)" in info.stdout, info.stdout + info.stderr

    # interrupted during epoch 2's validation, resumed: the same average as without a stop
    restore = interrupt_second_validation(monkeypatch)
    out = tmp_path / "run"
    r = runner.invoke(train_app, [str(a) for a in (itw_dataset, "--out", out, *args)])
    assert r.exit_code == 130
    restore()
    r = runner.invoke(train_app, ["--resume", str(out)])
    assert r.exit_code == 0, r.stderr
    a = torch.load(out / "checkpoint.pt", weights_only=True)["ema"]
    assert all(torch.equal(a[k], ckpt["ema"][k]) for k in a)
    a = torch.load(out / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], weights[k]) for k in a)


def test_resume_refuses_a_checkpoint_without_the_average(tmp_path):
    from runtime.errors import DfaError
    from trainer.checkpoint import load_checkpoint, save_checkpoint
    from trainer.distributed import Dist

    model = tiny()
    opt = torch.optim.Adam(model.parameters())
    dist = Dist("cpu")
    save_checkpoint(tmp_path / "c.pt", 1, model, opt, None, {"epoch": 1}, dist)
    with pytest.raises(DfaError, match="--ema.*no average"):
        load_checkpoint(tmp_path / "c.pt", model, opt, None, dist, make_ema(model, 0.9))


@pytest.mark.parametrize("bad", [1.0, -0.1, 2])
def test_run_json_refuses_a_decay_outside_0_1(bad):
    from trainer.config import TrainConfig

    with pytest.raises(ValueError, match="'ema'"):
        TrainConfig.from_dict({"data_dir": "d", "out": "o", "ema": bad})
