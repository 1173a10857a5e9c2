"""RunState: what the parts of a training run share once the data is prepared and the
model built (the run's settings, folder, process group, model and splits, best epoch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import FeatureConfig
from trainer.config import TrainConfig
from trainer.distributed import Dist
from trainer.log import Log


def no_best_yet() -> dict[str, float]:
    return {"epoch": 0, "val_eer": math.inf, "val_loss": math.inf}


@dataclass
class RunState:
    cfg: TrainConfig
    out: Path
    dist: Dist
    log: Log
    arch_name: str  # the timm model name the preset resolves to
    arch_kwargs: dict[str, Any]
    features: FeatureConfig
    splits: dict[str, Any]  # "train"/"val"/"test" -> rows of dataset.csv (DataFrame)
    model: Any = None  # the torch module (not wrapped in DDP)
    eval_model: Any = None  # what validation scores: `model`, or its moving average (--ema)
    # The best epoch so far by (val EER, val loss); stored as a dict in checkpoint.pt.
    best: dict[str, float] = field(default_factory=no_best_yet)
