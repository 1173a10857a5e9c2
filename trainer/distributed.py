"""The torchrun environment: this process's rank, world size and device, and the few
collectives the run needs (all no-ops in a single process)."""

from __future__ import annotations

import os

from runtime.session import DeviceError


class Dist:
    """torchrun environment: rank, world size and the device of this process."""

    def __init__(self, device: str):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device not in ("auto", "cpu", "cuda"):
            raise DeviceError(f"unknown --device {device!r}; use auto, cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise DeviceError("--device cuda, but torch sees no CUDA device; use --device cpu")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        # A launcher's run (torchrun sets WORLD_SIZE and MASTER_ADDR) gets a process group
        # even with one process: `torchrun --nproc_per_node 1` then checks the backend
        # (nccl on a GPU) that N processes would use. The collectives below stay no-ops.
        self.backend = None
        if self.world > 1 or ("WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ):
            import torch.distributed as dist

            self.backend = "nccl" if use_cuda else "gloo"
            dist.init_process_group(self.backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.cuda else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.backend is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.backend = None
