"""Checkpoints written atomically and loaded safely (no code can run from a checkpoint file)."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxraug.errors import DataError
from cxraug.fileio import atomic_write

CHECKPOINT_FORMAT = 1


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, fsynced and renamed over ``path``."""
    atomic_write(Path(path), lambda f: torch.save(obj, f))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors, numbers, strings, lists and dicts only."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path}: no such file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"checkpoint {path}: refused, it holds objects other than tensors and plain values "
            f"({_first_line(exc)}). Only load checkpoints you trust, made by cxraug"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        raise DataError(
            f"checkpoint {path}: corrupt or truncated ({_first_line(exc)}); use an "
            "earlier checkpoint of the run (checkpoints/) or retrain"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"checkpoint {path}: not a cxraug checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return obj


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches, as plain values (safe to load with weights_only)."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_plain_to_py_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _plain_to_py_state(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> list[str]:
    """Load every tensor whose name and shape match; return the names skipped (for transfer)."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise DataError(
            f"{where}: no weights match this network (different architecture or options); "
            "transfer needs a checkpoint of the same architecture and size"
        )
    own.update(usable)
    module.load_state_dict(own)
    return sorted(set(own) - set(usable))
