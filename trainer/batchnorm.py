"""Precise BatchNorm statistics for evaluation.

Eval mode normalises with running statistics: an exponential average (momentum 0.1) of the
batch statistics seen while the weights were moving. With few steps per epoch and a large
learning rate (the demo: 15 steps an epoch at lr 1e-3) that average still carries the
weights of several steps ago, and the eval-mode network can collapse to one class
(validation accuracy 0.500 for the first epochs of a fresh-machine demo) while train mode
is fine. Recomputing the statistics with the epoch's final weights, as a plain average
over training batches, removes the lag (Wu and Johnson 2021, "Rethinking 'Batch' in
BatchNorm", section 3: precise BN; fvcore's update_bn_stats does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


def batchnorm_layers(model) -> list:
    import torch

    # Frozen layers (dfa-train --freeze-until) keep the statistics they came with.
    return [m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and not (m.weight is not None and not m.weight.requires_grad)]


def recalibrate(model, batches: Iterable, forward: Callable, max_batches: int) -> int:
    """Reset every BatchNorm layer's running mean/var and recompute them as the average
    over up to `max_batches` batches (`forward(batch)` runs the model on one). Returns the
    number of batches used; 0 leaves the model as it was."""
    import torch

    layers = batchnorm_layers(model)
    if not layers or max_batches < 1:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(),
              m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if used >= max_batches:
                    break
                if len(batch) < 2:  # BatchNorm has no variance from one sample
                    continue
                forward(batch)
                used += 1
    finally:
        for m, (momentum, mean, var, count) in zip(layers, saved, strict=True):
            m.momentum = momentum
            if used == 0:  # nothing seen: keep the old statistics
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        model.train(was_training)
    return used


def average_across_ranks(model, dist) -> None:
    """DDP: every rank saw its own shard; average the statistics so all ranks agree."""
    if dist.world == 1:
        return
    import torch.distributed as tdist

    for m in batchnorm_layers(model):
        for t in (m.running_mean, m.running_var):
            tdist.all_reduce(t)
            t /= dist.world
