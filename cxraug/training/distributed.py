"""Multi-process training through torch.distributed (torchrun / --nproc), DDP-wrapped modules."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cxraug.interfaces import DistContext


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun set up; a no-op context when running alone."""
    if not in_torchrun():
        return DistContext(), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)

    def wrap(module: nn.Module) -> nn.Module:
        if not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [device.index] if device.type == "cuda" else None
        # Buffers (BatchNorm statistics, w_avg) stay per process during training; torch >= 2.13
        # renamed the flag that says so.
        params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        flag = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        kwargs: dict[str, Any] = {flag: False}
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)

    def all_reduce_grads(module: nn.Module) -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    return DistContext(rank=rank, world_size=world, wrap=wrap, all_reduce_grads=all_reduce_grads), device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_str(value: str | None) -> str | None:
    """Rank 0's string on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def strip_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE`` (to re-issue a command under torchrun)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cxraug",
        *argv,
    ]
    return subprocess.call(cmd)
