"""Which torch device a command runs on (``--device auto|cpu|cuda|mps``)."""

from __future__ import annotations

from typing import Literal

import torch

from cxraug.errors import OptionsError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an unavailable choice is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise OptionsError(f"--device {name!r}: choose auto, cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionsError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
    if name == "mps" and not _mps_available():
        raise OptionsError("--device mps: Apple MPS is not available here; use --device cpu")
    return torch.device(name)
