"""ROC/DET and training-curve plots. matplotlib is optional for the runtime: only the
commands that draw need it, and they say so plainly when it is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import metrics as M
from runtime.errors import DfaError
from runtime.fileio import atomic_path


class PlotError(DfaError):
    """A plot cannot be drawn (matplotlib missing, or the file cannot be written)."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise PlotError("plotting needs matplotlib: pip install matplotlib") from e


def _pyplot():
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def plot_roc_det(path: Path, curves: dict[str, tuple]) -> None:
    """ROC (left) and DET on normal-deviate axes (right) for each named (labels, scores)."""
    from statistics import NormalDist

    # The normal deviate from the standard library (the slim edge install has no scipy).
    probit = np.vectorize(NormalDist().inv_cdf, otypes=[float])

    plt = _pyplot()
    fig, (roc, det) = plt.subplots(1, 2, figsize=(10, 4.5))
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8])
    for name, (labels, scores) in curves.items():
        _, fpr, fnr = M.error_rates(labels, scores)
        rate, _ = M.eer(labels, scores)
        auc = M.roc_auc(labels, scores)
        roc.plot(fpr, 1 - fnr, label=f"{name}: AUC {auc:.4f}, EER {100 * rate:.2f}%")
        clip = lambda v: np.clip(v, 1e-4, 1 - 1e-4)  # noqa: E731
        det.plot(probit(clip(fpr)), probit(clip(fnr)), label=f"{name}: EER {100 * rate:.2f}%")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="false alarm rate (bona fide called spoof)",
            ylabel="detection rate (spoof caught)", title="ROC")
    det.plot(probit([1e-3, 0.9]), probit([1e-3, 0.9]), ":", color="grey")
    det.set_xticks(probit(ticks), [f"{100 * t:g}%" for t in ticks])
    det.set_yticks(probit(ticks), [f"{100 * t:g}%" for t in ticks])
    det.set(xlabel="false alarm rate", ylabel="miss rate (spoof called bona fide)",
            title="DET", xlim=probit([5e-4, 0.9]), ylim=probit([5e-4, 0.9]))
    for ax in (roc, det):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_curves(path: Path, history: list[dict]) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss, err) = plt.subplots(1, 2, figsize=(10, 4))
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    err.plot(epochs, [100 * h["val_eer"] for h in history], "o-", label="val EER")
    err.plot(epochs, [100 * (1 - h["val_acc"]) for h in history], "o-",
             label="val error at 0.5")
    err.set(xlabel="epoch", ylabel="%", title="validation")
    for ax in (loss, err):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
    plt.close(fig)
