"""torch.distributed for `torchrun --nproc_per_node N -m asdcli train ...`: DDP-style gradient averaging.

We average gradients by hand (one all-reduce over a flat buffer) instead of wrapping the generator in
DistributedDataParallel, because a step calls the generator twice (`forward` for the per-prompt state, then
`query` inside the renderer), which DDP's forward hooks do not model. Parameters start identical (broadcast from
rank 0) and receive identical averaged gradients, so they stay identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from asdcli.errors import UserError, shown


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collective tensors live: NCCL needs CUDA tensors, gloo CPU ones

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_kind: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE: expected a whole number of processes, got {shown(raw)}") from None
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:  # init_process_group would fail with a ValueError deep in torch (an internal error)
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with `torchrun "
                        f"--nproc_per_node {world} -m asdcli train ...`, or unset WORLD_SIZE for one process")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if device_kind == "cuda" else "cpu"
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, device)


def broadcast_parameters(modules: list[torch.nn.Module], info: DistInfo) -> None:
    if not info.enabled:
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """grad ← mean over ranks, in one all-reduce. Missing grads count as zeros so every rank sends the same."""
    if not info.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_gather_tensor(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor (RNG states for the checkpoint)."""
    if not info.enabled:
        return [t]
    t = t.to(info.device)
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when any rank raised the flag (non-finite step, stop request)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
