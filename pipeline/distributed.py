"""Every distributed detail in one place: process-group set-up from the environment torchrun (and
so TorchDistributor) provides, rank queries, and collective helpers. Without that environment
everything works as a single process, so ``fit`` runs under a debugger or a unit test as is."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def wants_gpu(preference: str) -> bool:
    """``cuda``, or ``auto`` on a machine that has one: the one rule for training, launch and scoring."""
    return preference == "cuda" or (preference == "auto" and torch.cuda.is_available())


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if wants_gpu(preference):
        if not torch.cuda.is_available():
            raise RuntimeError("train.runtime.device=cuda but no CUDA device is visible")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_preference: str = "auto") -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device_preference, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (e.g. the MLflow run id)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: torch.nn.Module, ctx: Context, find_unused: bool = False) -> torch.nn.Module:
    """DDP on more than one process; ``find_unused`` when some parameters get no gradient in a step
    (an autoencoder's decoder while only classifying)."""
    if ctx.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=find_unused)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
