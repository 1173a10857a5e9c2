"""dfa-train --sam: sharpness-aware minimisation takes each step with the gradient at the
worst nearby weights, leaves the weights and BatchNorm's statistics as they were, and is
recorded in run.json and model.json."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from tests.datasets import FAST_TRAIN  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.loop import sam_gradient  # noqa: E402

runner = CliRunner()


class Flat(torch.nn.Module):
    """A logistic regression with an optional BatchNorm in front: logits of shape (n,)."""

    def __init__(self, d: int, norm: bool = False):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(d) if norm else torch.nn.Identity()
        self.fc = torch.nn.Linear(d, 1)

    def forward(self, x):
        return self.fc(self.norm(x))


def batch(n=16, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (torch.rand(n, generator=g) > 0.5).float()
    return x, y


def grads(model, x, y, loss_fn):
    model.zero_grad(set_to_none=True)
    (loss_fn(model(x).reshape(-1), y) / x.shape[0]).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_the_gradient_is_taken_at_the_perturbed_weights_and_the_weights_come_back():
    torch.manual_seed(0)
    model, x, y = Flat(5), *batch()
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    cfg = TrainConfig(data_dir="d", out="o", sam=0.05)
    w = [p.detach().clone() for p in model.parameters()]
    g = grads(model, x, y, loss_fn)
    norm = math.sqrt(sum(float((t ** 2).sum()) for t in g))
    # the expected gradient, by hand: at w + rho * g / ||g||
    shifted = Flat(5)
    with torch.no_grad():
        for p, p0, t in zip(shifted.parameters(), w, g, strict=True):
            p.copy_(p0 + 0.05 * t / norm)
    want = grads(shifted, x, y, loss_fn)
    assert not all(torch.allclose(a, b) for a, b in zip(want, g, strict=True))  # another gradient

    sam_gradient(model, x, y, loss_fn, cfg, Dist("cpu"))
    for p, p0, t in zip(model.parameters(), w, want, strict=True):
        assert torch.equal(p.detach(), p0)
        assert torch.allclose(p.grad, t, atol=1e-6)


def test_the_weights_come_back_bit_for_bit_even_when_the_second_pass_fails():
    """w + e - e is not w in float32 for every weight (a 256-input layer at rho 0.5 rounds
    some): the weights are restored from a copy, also when the second pass raises."""
    torch.manual_seed(0)
    model, x, y = Flat(256), *batch(d=256)
    bce = torch.nn.BCEWithLogitsLoss(reduction="sum")
    cfg = TrainConfig(data_dir="d", out="o", sam=0.5)
    w = [p.detach().clone() for p in model.parameters()]
    grads(model, x, y, bce)
    sam_gradient(model, x, y, bce, cfg, Dist("cpu"))
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(model.parameters(), w,
                                                              strict=True))

    def broken(logits, target):
        raise RuntimeError("out of memory")

    grads(model, x, y, bce)
    with pytest.raises(RuntimeError, match="out of memory"):
        sam_gradient(model, x, y, broken, cfg, Dist("cpu"))
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(model.parameters(), w,
                                                              strict=True))


def test_a_training_step_moves_the_weights_by_the_sharpness_aware_gradient():
    """Through train_one_epoch with plain SGD at lr 1: the step is minus the gradient at
    the perturbed weights, computed by hand; a frozen parameter takes no part."""
    from trainer.log import Log
    from trainer.loop import train_one_epoch

    torch.manual_seed(0)
    model, x, y = Flat(5), *batch()
    model.fc.bias.requires_grad_(False)
    bce = torch.nn.BCEWithLogitsLoss(reduction="sum")
    w0 = model.fc.weight.detach().clone()
    bias = model.fc.bias.detach().clone()
    g = grads(model, x, y, bce)[0]  # the weight's (the bias has no gradient)
    shifted = Flat(5)
    with torch.no_grad():
        shifted.fc.weight.copy_(w0 + 0.05 * g / g.norm())
        shifted.fc.bias.copy_(bias)
    want = grads(shifted, x, y, bce)[0]
    model.zero_grad(set_to_none=True)
    cfg = TrainConfig(data_dir="d", out="o", sam=0.05, amp=False)
    optimizer = torch.optim.SGD([model.fc.weight], lr=1.0)
    train_one_epoch(model, [(x, y)], optimizer, bce, cfg, Dist("cpu"), 1, Log(False), 0.0)
    assert torch.allclose(model.fc.weight.detach(), w0 - want, atol=1e-6)
    assert not torch.allclose(model.fc.weight.detach(), w0 - g, atol=1e-4)  # not plain SGD
    assert torch.equal(model.fc.bias.detach(), bias)


@pytest.mark.parametrize("momentum", [0.1, None])  # None: a cumulative average
def test_the_second_pass_leaves_batchnorm_statistics_alone(momentum):
    torch.manual_seed(0)
    model, x, y = Flat(5, norm=True), *batch()
    model.norm.momentum = momentum
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    model.train()
    grads(model, x, y, loss_fn)  # the batch's one update of the running statistics
    mean = model.norm.running_mean.clone()
    var = model.norm.running_var.clone()
    seen = int(model.norm.num_batches_tracked)
    sam_gradient(model, x, y, loss_fn, TrainConfig(data_dir="d", out="o", sam=0.5),
                 Dist("cpu"))
    assert torch.equal(model.norm.running_mean, mean)
    assert torch.equal(model.norm.running_var, var)
    assert model.norm.momentum == momentum
    assert int(model.norm.num_batches_tracked) == seen


def test_a_zero_gradient_is_kept_as_it_is():
    model = Flat(3)
    x, y = torch.zeros(4, 3), torch.zeros(4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    sam_gradient(model, x, y, torch.nn.BCEWithLogitsLoss(reduction="sum"),
                 TrainConfig(data_dir="d", out="o", sam=0.05), Dist("cpu"))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    assert all(torch.equal(p.detach(), torch.zeros_like(p)) for p in model.parameters())


@pytest.mark.parametrize("bad", [-0.01, 11.0, float("nan"), "0.05"])
def test_run_json_refuses_a_radius_outside_0_10(bad):
    with pytest.raises(ValueError, match="'sam'"):
        TrainConfig.from_dict({"data_dir": "d", "out": "o", "sam": bad})


def test_the_cli_refuses_a_negative_radius(tmp_path):
    from trainer.cli import app

    r = runner.invoke(app, [str(tmp_path), "--sam", "-1"])
    assert r.exit_code == 2 and "--sam" in r.stderr


def test_a_sam_run_trains_other_weights_and_says_so(itw_dataset, features_json, feature_cache,
                                                    tmp_path):
    from trainer.cli import app

    args = ["--epochs", "1", "--feature-config", features_json, "--cache-dir", feature_cache,
            "--bn-batches", "0", *FAST_TRAIN]
    plain, sharp = tmp_path / "plain", tmp_path / "sam"
    for out, extra in ((plain, []), (sharp, ["--sam", "0.05"])):
        r = runner.invoke(app, [str(a) for a in (itw_dataset, "--out", out, *args, *extra)])
        assert r.exit_code == 0, r.stderr + r.stdout
    assert json.loads((sharp / "run.json").read_text())["config"]["sam"] == 0.05
    assert json.loads((plain / "run.json").read_text())["config"]["sam"] == 0.0
    meta = json.loads((sharp / "model.json").read_text())
    assert meta["metrics"]["recipe"]["sam_rho"] == 0.05
    from export.cli import app as export_app
    from runtime.info_cli import app as info_app

    e = runner.invoke(export_app, [str(sharp / "model.pth"), str(tmp_path / "sam.onnx")])
    assert e.exit_code == 0 and "FAIL" not in e.stdout, e.stderr + e.stdout
    info = runner.invoke(info_app, [str(tmp_path / "sam.onnx")])
    assert "sharpness-aware minimisation (rho 0.05)" in info.stdout, info.stdout + info.stderr
    a = torch.load(plain / "model.pth", weights_only=True)
    b = torch.load(sharp / "model.pth", weights_only=True)
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])
    # the running statistics moved once per batch in both runs
    key = next(k for k in a if k.endswith("num_batches_tracked"))
    assert torch.equal(a[key], b[key])
