"""Where a run's weights start: a dfa model (dfa-train --init-from) and which early stages
stay frozen (--freeze-until). Pretrained timm weights (--pretrained) are trainer.model's.

A dfa model is only a starting point for a run with the same network and the same input:
its architecture, its timm kwargs and its feature settings must equal the new run's, and
each mismatch is refused by name (weights trained on other inputs would load silently and
mean nothing).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from runtime.config import FeatureConfig
from runtime.errors import DfaError
from trainer.weights import load_metadata, load_state_dict

# timm ResNet's stages in input order: the stem (conv1, bn1), then layer1..layer4.
FREEZE_POINTS = ("stem", "layer1", "layer2", "layer3", "layer4")


class InitError(DfaError):
    """A starting point that does not fit this run (usage: exit 2)."""


def init_paths(source: str | Path) -> tuple[Path, Path]:
    """(model.pth, model.json) of a dfa-train run folder or of a model.pth."""
    path = Path(source)
    pth = path / "model.pth" if path.is_dir() else path
    if not pth.is_file():
        raise InitError(f"--init-from {source}: no model.pth there; give a finished "
                        "dfa-train run folder or its model.pth")
    for sidecar in (pth.with_suffix(".json"), pth.with_name("model.json")):
        if sidecar.is_file():
            return pth, sidecar
    raise InitError(f"--init-from {source}: no model.json beside {pth.name} (a run writes it "
                    "when it finishes); give a finished run, or put its model.json beside "
                    "the .pth")


def check_start(cfg) -> str | None:
    """Before any work: load the starting weights a TrainConfig names into a throwaway
    model, so that a file that does not fit (another network, other features, a damaged
    .pth) is refused by name before data preparation. Returns the sha256 of the file the
    weights come from (None for random or timm's ImageNet weights)."""
    from trainer.model import IMAGENET, create_model, network

    if not (cfg.init_from or cfg.pretrained):
        return None
    arch, arch_kwargs = network(cfg.arch, cfg.loss, cfg.oc_embedding)
    model = create_model(arch, arch_kwargs, cfg.pretrained,
                         in_chans=cfg.feature_config.input_shape[0])
    if cfg.init_from:
        load_init(model, cfg.init_from, arch, arch_kwargs, cfg.feature_config)
        return sha256_of(init_paths(cfg.init_from)[0])
    return None if cfg.pretrained == IMAGENET else sha256_of(Path(cfg.pretrained))


def check_same_network(source: str | Path, arch: str, arch_kwargs: dict,
                       features: FeatureConfig) -> Path:
    """The model.pth of `source`, once its model.json shows the same arch, timm kwargs
    and features as this run's."""
    pth, sidecar = init_paths(source)
    meta = load_metadata(sidecar)
    ours = {"arch": arch, "arch_kwargs": arch_kwargs or {}, "features": features.to_dict()}
    theirs = {"arch": meta.arch, "arch_kwargs": meta.arch_kwargs or {},
              "features": meta.features.to_dict()}
    for key in ("arch", "arch_kwargs"):
        if _norm(ours[key]) != _norm(theirs[key]):
            head = (ours[key].get("head", "linear"), theirs[key].get("head", "linear")) \
                if key == "arch_kwargs" else (None, None)
            embedding = (ours[key].get("embedding", 0), theirs[key].get("embedding", 0)) \
                if key == "arch_kwargs" else (None, None)
            hint = ("use the --loss it was trained with (oc-softmax has a cosine head, bce a "
                    "linear one)" if head[0] != head[1] else
                    f"use the --oc-embedding it was trained with ({embedding[1]})"
                    if embedding[0] != embedding[1] else
                    "use the same --arch as the model you start from")
            raise InitError(f"--init-from {source}: its {key} {theirs[key]} differs from this "
                            f"run's {ours[key]}; {hint}")
    changed = sorted(k for k in set(ours["features"]) | set(theirs["features"])
                     if ours["features"].get(k) != theirs["features"].get(k))
    if changed:
        what = ", ".join(f"{k} {theirs['features'].get(k)!r} vs {ours['features'].get(k)!r}"
                         for k in changed[:4])
        raise InitError(f"--init-from {source}: its features differ from this run's ({what}); "
                        "use the model's feature settings (--feature-config with its model.json "
                        "features)")
    return pth


def load_init(model, source: str | Path, arch: str, arch_kwargs: dict,
              features: FeatureConfig) -> None:
    """Load a dfa model's weights into `model` after checking it is the same network on
    the same input."""
    pth = check_same_network(source, arch, arch_kwargs, features)
    state = load_state_dict(pth)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InitError(f"--init-from {source}: {pth.name} does not fit {arch} ("
                        f"{' '.join(str(e).split())[:200]})") from e


def freeze(model, until: str) -> int:
    """Freeze the stem and the stages up to `until` (one of FREEZE_POINTS): their weights
    get no gradient, and their BatchNorm layers keep the statistics they came with (eval
    mode whenever the model trains; precise BN leaves them alone). Returns how many
    parameters are frozen."""
    if until not in FREEZE_POINTS:
        raise InitError(f"--freeze-until {until!r}: use one of {', '.join(FREEZE_POINTS)}")
    names = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, FREEZE_POINTS.index(until) + 1)]
    frozen = [getattr(model, n) for n in names]
    count = 0
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
            count += p.numel()
    train = model.train

    def train_keeping_frozen(mode: bool = True):
        train(mode)
        for module in frozen:
            module.train(False)
        return model

    model.train = train_keeping_frozen
    model.train(model.training)
    return count


def _norm(kwargs):
    """JSON and timm spell sequences as lists or tuples: compare them as lists."""
    if isinstance(kwargs, dict):
        return {k: _norm(v) for k, v in kwargs.items()}
    if isinstance(kwargs, (list, tuple)):
        return [_norm(v) for v in kwargs]
    return kwargs


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
