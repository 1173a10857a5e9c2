"""checkpoint.pt: everything --resume needs to continue after the last completed epoch
(model, optimizer, scheduler, best epoch so far, RNG states), saved atomically and loaded
with weights_only=True."""

from __future__ import annotations

import random
from pathlib import Path

from runtime.errors import DfaError
from runtime.fileio import atomic_path
from trainer.distributed import Dist

# plus "scheduler" (None without one) and, with --ema, "ema" (the averaged network's state)
KEYS = ("epoch", "model", "optimizer", "best", "rng")


def atomic_torch_save(obj, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state(dist: Dist) -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if dist.cuda:
        state["cuda"] = torch.cuda.get_rng_state(dist.device)
    return state


def set_rng_state(state: dict, dist: Dist) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if dist.cuda and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dist.device)


def save_checkpoint(path: Path, epoch: int, model, optimizer, scheduler, best: dict,
                    dist: Dist, ema=None) -> None:
    state = {
        "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best": best, "rng": rng_state(dist),
    }
    if ema is not None:
        state["ema"] = ema.module.state_dict()
    atomic_torch_save(state, path)


def load_checkpoint(path: Path, model, optimizer, scheduler, dist: Dist, ema=None
                    ) -> tuple[int, dict]:
    """Restore the run's state in place; returns (last completed epoch, best so far)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ema is not None and "ema" not in ckpt:
        raise DfaError(f"{path}: this run averages its weights (--ema) but the checkpoint "
                       "has no average; start a new run with another --out")
    model.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.module.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], dist)
    return int(ckpt["epoch"]), ckpt["best"]


def check_checkpoint(path: Path) -> None:
    """Fail now, in one line, on a checkpoint that --resume could not load (truncated by a
    full disk, overwritten, not ours). Loaded as load_checkpoint loads it (weights_only=True),
    here memory-mapped so the check costs little."""
    if not path.exists():
        return
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        reason = " ".join(str(e).split())
        reason = reason if len(reason) <= 70 else reason[:67] + "..."
        raise DfaError(f"{path}: not a readable checkpoint, this run cannot be resumed; start "
                       f"a new one with another --out ({type(e).__name__}: {reason})") from None
    if not (isinstance(ckpt, dict) and set(KEYS) <= ckpt.keys()
            and isinstance(ckpt["epoch"], int) and isinstance(ckpt["best"], dict)):
        raise DfaError(f"{path}: not a dfa-train checkpoint (needs "
                       f"{', '.join(sorted(KEYS))}); this run cannot be resumed, start a new "
                       "one with another --out")
