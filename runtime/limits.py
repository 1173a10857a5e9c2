"""Limits and thread settings shared by the CLIs and the runtime, importable without numpy
(the CLIs read them before numpy is first imported)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# A batch of 224x224 windows is 200 kB per window before the model's activations (res2net50:
# ~25 MB per window on CPU): 512 is past any speed gain and still fits a GPU.
MAX_BATCH = 512

# The variables that size the thread pools of numpy's BLAS, OpenMP (torch on CPU) and
# numba (librosa). Read once, when each library loads.
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
THREAD_VARS = (*BLAS_VARS, "NUMBA_NUM_THREADS")


def default_single_thread() -> None:
    """One BLAS thread unless the user set otherwise: the runtime's numpy work is small
    matrices, and BLAS threads would compete with onnxruntime's for the cores. Must run
    before numpy is first imported. Not for training (torch sizes itself from OMP)."""
    for var in BLAS_VARS:
        os.environ.setdefault(var, "1")


@contextlib.contextmanager
def single_thread_children() -> Iterator[None]:
    """Child processes started inside the block use one thread per library: the
    parallelism is across processes, and N processes x N threads would oversubscribe."""
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    os.environ.update({k: "1" for k in THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
