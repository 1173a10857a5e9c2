"""Starting a run from weights: a dfa model (--init-from, --freeze-until) and a local timm
checkpoint (--pretrained FILE). Nothing is downloaded: the checkpoint is made here."""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from tests.datasets import FAST_TRAIN  # noqa: E402
from trainer.cli import app  # noqa: E402

runner = CliRunner()
STEM = ("conv1.", "bn1.")


def train(*args):
    return runner.invoke(app, [str(a) for a in args])


def fast(arch: str = "tiny") -> list[str]:
    args = list(FAST_TRAIN)
    args[args.index("--arch") + 1] = arch
    return args


def weights(run) -> dict:
    return torch.load(run / "model.pth", map_location="cpu", weights_only=True)


def start_record(run) -> dict:
    return json.loads((run / "model.json").read_text())["metrics"]["recipe"]["start"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_from_a_run_starts_there_and_keeps_frozen_stages(
        trained_run, itw_dataset, features_json, feature_cache, tmp_path):
    base, _ = trained_run
    out = tmp_path / "tuned"
    r = train(itw_dataset, "--out", out, "--epochs", "1", "--feature-config", features_json,
              "--cache-dir", feature_cache, *fast(), "--init-from", base,
              "--freeze-until", "layer2")
    assert r.exit_code == 0, r.stderr + r.stdout
    before, after = weights(base), weights(out)
    frozen = [k for k in before if k.startswith((*STEM, "layer1.", "layer2."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), \
        [k for k in frozen if not torch.equal(before[k], after[k])][:3]
    trained = [k for k in before if k.startswith(("layer4.", "fc.")) and
               before[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    assert start_record(out) == {"from": "dfa model", "path": str(base / "model.pth"),
                                 "sha256": sha256(base / "model.pth"),
                                 "frozen_until": "layer2"}
    assert "frozen up to layer2" in r.stderr + r.stdout


def test_init_from_refuses_another_network_or_input_by_name(
        trained_run, itw_dataset, features_json, feature_cache, tmp_path):
    base, _ = trained_run
    r = train(itw_dataset, "--out", tmp_path / "a", "--feature-config", features_json,
              "--cache-dir", feature_cache, *fast("edge"), "--init-from", base)
    assert r.exit_code == 2 and "its arch_kwargs" in r.stderr and "--arch" in r.stderr
    r = train(itw_dataset, "--out", tmp_path / "b", "--cache-dir", feature_cache, *fast(),
              "--init-from", base / "model.pth")
    assert r.exit_code == 2 and "its features differ" in r.stderr
    assert "n_fft 512 vs 1024" in r.stderr
    r = train(itw_dataset, "--out", tmp_path / "c", *fast(), "--init-from", tmp_path)
    assert r.exit_code == 2 and "no model.pth there" in r.stderr
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "model.pth").write_bytes((base / "model.pth").read_bytes())
    r = train(itw_dataset, "--out", tmp_path / "d", *fast(), "--init-from", unfinished)
    assert r.exit_code == 2 and "no model.json beside model.pth" in r.stderr


def timm_checkpoint(path, arch: str = "tiny", seed: int = 1):
    """A timm res2net's own state_dict (3 input channels, 1000 classes), as timm's
    ImageNet checkpoints are, for the preset's shape."""
    import timm

    from trainer.model import resolve_arch

    name, kwargs = resolve_arch(arch)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False, **kwargs).state_dict()
    torch.save(state, path)
    return state


def test_pretrained_file_adapts_the_first_convolution(itw_dataset, features_json,
                                                      feature_cache, tmp_path):
    ckpt = tmp_path / "tiny-imagenet.pth"
    source = timm_checkpoint(ckpt)
    out = tmp_path / "run"
    r = train(itw_dataset, "--out", out, "--epochs", "1", "--feature-config", features_json,
              "--cache-dir", feature_cache, *fast(), "--pretrained", ckpt,
              "--freeze-until", "stem")
    assert r.exit_code == 0, r.stderr + r.stdout
    got = weights(out)
    # timm's in_chans=1 adaptation: the RGB kernels summed; the stem frozen from there.
    assert got["conv1.weight"].shape[1] == 1
    assert torch.allclose(got["conv1.weight"], source["conv1.weight"].sum(dim=1, keepdim=True))
    for k in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        assert torch.equal(got[k], source[k]), k
    assert got["fc.weight"].shape == (1, source["fc.weight"].shape[1])  # a new classifier
    assert start_record(out) == {"from": "timm checkpoint", "path": str(ckpt),
                                 "sha256": sha256(ckpt), "frozen_until": "stem"}


def test_pretrained_weights_of_another_shape_are_refused_plainly(
        itw_dataset, features_json, feature_cache, tmp_path):
    ckpt = tmp_path / "tiny.pth"
    timm_checkpoint(ckpt)
    r = train(itw_dataset, "--out", tmp_path / "run", "--feature-config", features_json,
              "--cache-dir", feature_cache, *fast("edge"), "--pretrained", ckpt)
    assert r.exit_code == 2
    (error,) = r.stderr.strip().splitlines()  # one line, before any data preparation
    assert error.startswith(f"dfa-train: error: --pretrained {ckpt}: its weights do not fit "
                            "res2net50_26w_4s with layers=")
    assert "use --arch res2net50" in error
    assert not (tmp_path / "run" / "dataset.csv").exists()


def test_pretrained_checkpoints_that_load_partly_or_not_at_all_are_refused(
        itw_dataset, tmp_path):
    """timm loads with strict=False once the classifier is dropped: dfa checks that every
    other weight was there (a renamed or partial checkpoint would start from random)."""
    state = timm_checkpoint(tmp_path / "full.pth")
    torch.save({f"encoder.{k}": v for k, v in state.items()}, tmp_path / "renamed.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")},
               tmp_path / "partial.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    for name, message in (("renamed", "do not fit"), ("partial", "missing"),
                          ("empty", "not a readable timm checkpoint"),
                          ("tensor", "not a readable timm checkpoint")):
        r = train(itw_dataset, "--out", tmp_path / name, *fast(), "--pretrained",
                  tmp_path / f"{name}.pth")
        (error,) = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and f"{name}.pth" in error and message in error, error


@pytest.mark.parametrize("args,message", [
    (["--freeze-until", "layer1"], "add --init-from or --pretrained"),
    (["--pretrained", "x.pth", "--init-from", "."], "exclude each other"),
    (["--pretrained", "missing.pth"], "missing.pth: no such file"),
    (["--init-from", "x", "--freeze-until", "layer9"], "layer9"),
])
def test_start_options_are_checked_before_any_work(itw_dataset, tmp_path, args, message):
    r = train(itw_dataset, "--out", tmp_path / "run", *fast(), *args)
    assert r.exit_code == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "run" / "dataset.csv").exists()


def test_run_json_keeps_the_start_for_resume():
    from trainer.config import TrainConfig

    cfg = TrainConfig.from_dict({"data_dir": "d", "out": "o", "init_from": "/runs/base",
                                 "freeze_until": "layer3", "start_sha256": "ab"})
    assert (cfg.init_from, cfg.freeze_until, cfg.pretrained) == ("/runs/base", "layer3", None)
    for bad, message in (({"freeze_until": "layer9"}, "freeze_until"),
                         ({"freeze_until": "stem"}, "needs 'pretrained' or 'init_from'"),
                         ({"pretrained": "x.pth", "init_from": "r"}, "starts from one")):
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict({"data_dir": "d", "out": "o", **bad})
