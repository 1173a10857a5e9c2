"""TrainConfig: every setting of a training run, as dfa-train's options set them and as
run.json stores them (what --resume reads back)."""

from __future__ import annotations

import math
import os
import typing
from dataclasses import MISSING, dataclass, field, fields

from runtime.config import FeatureConfig
from runtime.metadata import AGGREGATIONS
from runtime.session import DEVICES

SPLIT_KINDS = ("stratified", "speaker")
# cosine: per epoch to 0 (CosineAnnealingLR); warmup-cosine: per step, linear warmup over
# warmup_epochs, then half a cosine to 0.
SCHEDULERS = ("none", "cosine", "warmup-cosine")
OPTIMIZERS = ("adam", "adamw")
# bce: binary cross-entropy on timm's linear classifier; oc-softmax: the one-class loss on a
# cosine head (trainer.model.cosine_head, trainer.loop.make_loss).
LOSSES = ("bce", "oc-softmax")
RECIPES = ("default", "original")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dfa", "features")


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class TrainConfig:
    data_dir: str
    out: str
    arch: str = "res2net50"
    features: dict = field(default_factory=lambda: FeatureConfig().to_dict())
    split: str = "stratified"
    splits_file: str | None = None
    holdout_attack: str | None = None  # leave-one-attack-out (trainer.data.hold_out_attack)
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    scheduler: str = "none"
    workers: int = field(default_factory=default_workers)
    device: str = "auto"
    amp: bool = True
    target_fpr: float | None = None
    skip_bad: bool = False
    cache_dir: str = field(default_factory=default_cache_dir)
    aggregation: str = "mean"
    allow_outside: bool = False  # meta.csv may name absolute and ../ paths
    # Precise BatchNorm: eval-mode statistics recomputed after every epoch over up to this
    # many training batches (0: keep the running averages); trainer/batchnorm.py says why.
    bn_batches: int = 200
    threads: int | None = None  # torch CPU threads (None: torch's default, one per core)
    # The recipe (trainer/recipe.py): "original" is the seed project's (frozen feature
    # windows, no augmentation, Adam 1e-4, BCE); "default" trains from cached audio with
    # the augmentation below, computed on the fly.
    recipe: str = "original"
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0  # linear warmup, per step, before the schedule
    class_balance: bool = False  # weight BCE so both classes count equally
    loss: str = "bce"  # LOSSES
    # oc-softmax only: project the pooled features to this many dimensions (a signed linear
    # layer, as the paper's network) before the cosine head; 0: the cosine on them directly.
    oc_embedding: int = 0
    # Exponential moving average of the weights (trainer.loop.make_ema): the per-step decay
    # it approaches (0: off); validation, model selection and model.pth use the average.
    ema: float = 0.0
    # Sharpness-aware minimisation (trainer.loop.sam_gradient): the radius rho of the weight
    # perturbation (0: off; 0.05 is the paper's and NII's anti-spoofing setting).
    sam: float = 0.0
    augment: dict | None = None  # AugmentConfig.to_dict(); None: no augmentation
    copy_synthesis: dict | None = None  # CopySynthesisConfig.to_dict(); None: none
    # Where the weights start (trainer/init.py): timm's ImageNet weights ("imagenet") or a
    # local timm checkpoint; or a dfa model (run folder or model.pth) of the same network;
    # and the stages up to freeze_until kept frozen.
    pretrained: str | None = None
    init_from: str | None = None
    freeze_until: str | None = None
    start_sha256: str | None = None  # of the init or pretrained file, when the run began

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config of a run.json; ValueError names the first field that does not fit
        (a hand-edited or damaged file), so --resume fails before any work."""
        if not isinstance(d, dict):
            raise ValueError(f"config is a JSON {type(d).__name__}, not an object")
        hints = typing.get_type_hints(cls)
        # One rule for every config dfa reads from a file (FeatureConfig and ModelMetadata
        # too): an unknown key is refused, not dropped (a typo would silently be ignored).
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError("config has unknown key(s) "
                             + ", ".join(repr(k)[:40] for k in unknown[:5]))
        from trainer.init import FREEZE_POINTS

        choices = {"split": SPLIT_KINDS, "scheduler": SCHEDULERS, "device": DEVICES,
                   "aggregation": AGGREGATIONS, "optimizer": OPTIMIZERS, "recipe": RECIPES,
                   "loss": LOSSES,
                   "freeze_until": FREEZE_POINTS}
        kept = {}
        for f in fields(cls):
            if f.name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"config has no {f.name!r}")
                continue
            value, kind = d[f.name], hints[f.name]
            allowed = typing.get_args(kind) or (kind,)
            if float in allowed:  # JSON writes 1.0 as 1
                allowed = (*allowed, int)
            if (isinstance(value, bool) and bool not in allowed) or not isinstance(
                    value, tuple(type(None) if a is None else a for a in allowed)):
                name = kind.__name__ if isinstance(kind, type) else str(kind)
                raise ValueError(f"config {f.name!r} is {value!r}, not {name}")
            if float in allowed and type(value) is int:
                value = float(value)
            if f.name in choices and value is not None and value not in choices[f.name]:
                raise ValueError(f"config {f.name!r} is {value!r}; expected one of "
                                 f"{', '.join(choices[f.name])}")
            # The CLI's own ranges (dfa-train --help), so a hand-edited run.json cannot
            # reach the data loader with a batch of 0.
            lowest = {"epochs": 1, "batch_size": 2, "workers": 1, "bn_batches": 0,
                      "threads": 1, "lr": 0.0, "weight_decay": 0.0,
                      "warmup_epochs": 0.0}.get(f.name)
            if lowest is not None and value is not None and value < lowest:
                raise ValueError(f"config {f.name!r} is {value!r}; it must be at least "
                                 f"{lowest}")
            if f.name == "oc_embedding" and not (value == 0 or 2 <= value <= 4096):
                raise ValueError(f"config 'oc_embedding' is {value!r}; it must be 0 or in "
                                 "[2, 4096]")
            if f.name == "sam" and not (math.isfinite(value) and 0.0 <= value <= 10.0):
                raise ValueError(f"config 'sam' is {value!r}; it must be in [0, 10]")
            if f.name == "ema" and not 0.0 <= value < 1.0:
                raise ValueError(f"config 'ema' is {value!r}; it must be in [0, 1)")
            if f.name == "target_fpr" and value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"config 'target_fpr' is {value!r}; it must be in [0, 1]")
            kept[f.name] = value
        cfg = cls(**kept)
        if cfg.pretrained and cfg.init_from:
            raise ValueError("config has both 'pretrained' and 'init_from'; a run starts "
                             "from one")
        if cfg.oc_embedding and cfg.loss != "oc-softmax":
            raise ValueError("config 'oc_embedding' needs 'loss' oc-softmax")
        if cfg.freeze_until and not (cfg.pretrained or cfg.init_from):
            raise ValueError("config 'freeze_until' needs 'pretrained' or 'init_from'")
        cfg.augment_config  # noqa: B018 - validates them
        cfg.copy_config  # noqa: B018
        return cfg

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.features)

    @property
    def augment_config(self):
        from trainer.augment import AugmentConfig

        return AugmentConfig.none() if self.augment is None else AugmentConfig.from_dict(
            self.augment)

    @property
    def copy_config(self):
        from trainer.augment import CopySynthesisConfig

        return CopySynthesisConfig() if self.copy_synthesis is None else (
            CopySynthesisConfig.from_dict(self.copy_synthesis))

    @property
    def from_audio(self) -> bool:
        """Train on windows computed on the fly from the audio cache (any recipe but the
        original's frozen feature windows)."""
        return self.recipe != "original"
