"""How the training step runs on its device, never what it computes: mixed precision (bf16
autocast), channels-last tensors and ``torch.compile``, chosen by ``train.runtime.precision``,
``train.runtime.channels_last`` and ``train.runtime.compile``. ``auto`` means what a device is known to gain from:
bf16 and channels-last on CUDA, plain fp32 (contiguous NCHW) on the CPU. fp32 on the CPU is the
reference numerics; the others trade the last bits of each step for speed."""
from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import RuntimeConfig


@dataclass(frozen=True)
class Accel:
    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    compile: bool = False

    @property
    def dtype(self):
        return torch.bfloat16 if self.precision == "bf16" else None

    def autocast(self, device):
        """The forward pass's precision context (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in the step's memory format (in place: the weights stay the same tensors' values)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def step_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the step calls: the (DDP-wrapped) model, compiled when asked; the original keeps the
        weights, the checkpoint and the evaluation."""
        return torch.compile(model) if self.compile else model

    def describe(self) -> dict:
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}


def accel_for(t: RuntimeConfig, device: torch.device) -> Accel:
    cuda = device.type == "cuda"
    precision = ("bf16" if cuda else "fp32") if t.precision == "auto" else t.precision
    channels_last = cuda if t.channels_last == "auto" else t.channels_last == "on"
    warn_slow_bf16(precision, device, "train.runtime.precision")
    return Accel(precision, channels_last, t.compile)


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo's flags).
    Elsewhere (AVX2, AVX-512 without BF16, a CPU whose flags are unknown) oneDNN emulates bf16: on an
    AVX2 EPYC a ResNet-32 step in bf16 autocast ran many times slower than in fp32 (bench/train.py
    --steps fp32,bf16)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=None)
def _native_bf16() -> bool:
    return cpu_has_bf16()


def warn_slow_bf16(precision: str, device, key: str) -> None:
    """Say so, once per setting, when ``key`` asks for bf16 on a CPU that would emulate it."""
    if precision == "bf16" and torch.device(device).type == "cpu" and not _native_bf16():
        warnings.warn(f"{key}=bf16 on a CPU without bf16 instructions ({torch.backends.cpu.get_cpu_capability()}, no "
                      f"avx512_bf16/amx_bf16): it is emulated and runs many times slower than fp32; set {key}=fp32 "
                      f"(or auto) on this machine", RuntimeWarning, stacklevel=3)


# Images per inference forward pass (evaluation, scoring) when the setting is 0 (auto). On a CPU, 128
# keeps ResNet-32's activations in cache: evaluation ran 946 vs 487 images/s (fp32 NCHW, 2 threads) and
# 1,415 vs 763 (channels-last) at 128 vs 512 on the 2-core dev machine. A GPU keeps 512: few, large batches.
INFERENCE_BATCH = {"cpu": 128, "cuda": 512}


def inference_batch(size: int, device) -> int:
    """``size``, or for 0 the device's default (``INFERENCE_BATCH``)."""
    if size < 0:
        raise ValueError(f"an inference batch size must be >= 0 (0: the device's default), got {size}")
    return size or INFERENCE_BATCH.get(torch.device(device).type, INFERENCE_BATCH["cpu"])
