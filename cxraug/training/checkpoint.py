"""Checkpoints written atomically and loaded safely (no code can run from a checkpoint file)."""

from __future__ import annotations

import pickle
import random
import re
import warnings
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
    """The gist of an exception: its first sentence (torch's add paragraphs of advice)."""
    lines = str(exc).splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__


#: What ``torch.save`` files start with: a zip archive (the format cxraug writes), or a bare pickle
#: (protocol 2 or later opens with the PROTO opcode) in torch's legacy format.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_GLOBAL = re.compile(r"GLOBAL (\S+)")


def not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint at all, judged from its first bytes (None: it may be).

    Without this, a text file or an image reaches the unpickler and fails with whatever torch
    happens to raise (an IndexError for /etc/passwd) or, worse, with advice about unsafe loading.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "an empty file (a save or copy cut short?)"
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None  # a damaged torch archive: torch.load says what is wrong with it
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "a zip archive not written by torch.save"
        return None
    if head.startswith(_PICKLE_PROTO):
        return None
    return "not a file written by torch.save"


def _refused(path: Path, exc: BaseException) -> str:
    """The refusal of a checkpoint that needs more than tensors and plain values to load.

    PyTorch's own message suggests ``weights_only=False``, which would run whatever the file holds;
    say instead what happened and what is safe.
    """
    found = _GLOBAL.search(str(exc))
    what = f" (it names {found.group(1)})" if found else ""
    return (
        f"checkpoint {path}: refused: it holds code or objects cxraug does not load{what}, and "
        "nothing in it was run. Use a checkpoint written by cxraug; for weights from elsewhere, "
        "re-save them in an environment you trust as a plain state dict of tensors "
        "(torch.save(model.state_dict(), PATH))"
    )


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors, numbers, strings, lists and dicts only."""
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "no such file"
        raise DataError(f"checkpoint {path}: {what}")
    reason = not_a_torch_file(path)
    if reason is not None:
        raise DataError(f"checkpoint {path}: {reason}; not a cxraug checkpoint (ckpt-*.pt or best.pt)")
    try:
        with warnings.catch_warnings():
            # a bare pickle of another protocol: the refusal below says all a user needs to know
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(_refused(path, exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        if isinstance(exc, RuntimeError) and "magic number" in str(exc):
            # a bare pickle of plain values: not torch's legacy format either
            raise DataError(
                f"checkpoint {path}: a Python pickle not written by torch.save; not a cxraug "
                "checkpoint (ckpt-*.pt or best.pt)"
            ) from None
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
