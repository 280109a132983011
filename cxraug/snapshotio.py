"""Read the community's StyleGAN snapshot files without running anything they contain.

Two formats are read into inert records (flat ``name -> tensor`` dicts per network):

* **NVlabs network pickles** (``network-snapshot-*.pkl`` of stylegan2-ada-pytorch and stylegan3,
  https://github.com/NVlabs/stylegan2-ada-pytorch, https://github.com/NVlabs/stylegan3). ``training/
  training_loop.py`` pickles ``dict(training_set_kwargs=..., G=..., D=..., G_ema=...,
  augment_pipe=...)`` with plain :mod:`pickle`; ``legacy.load_network_pkl`` reads it back. Each
  network is a ``@persistent_class`` module (``torch_utils/persistence.py``): its ``__reduce__``
  returns ``(_reconstruct_persistent_obj, (meta,))`` with ``meta = dict(type='class', version=6,
  module_src=<the module's source code>, class_name=..., state=<the module's __dict__>)``, and
  ``_reconstruct_persistent_obj`` would ``exec`` ``module_src``. Here that global is replaced by a
  function that keeps ``class_name`` and ``state`` (its ``_parameters``, ``_buffers`` and
  ``_modules``) as a :class:`PersistentRecord` and never looks at ``module_src``. Tensors inside
  are pickled by PyTorch itself (``torch/_tensor.py`` ``__reduce_ex__``, ``torch/storage.py``
  ``__reduce__``): ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over a storage
  pickled as ``torch.storage._load_from_bytes(<bytes of a legacy torch.save>)``, whose own
  implementation calls ``torch.load(..., weights_only=False)``; here those bytes go through
  ``torch.load(..., weights_only=True)`` only. ``dnnlib.util.EasyDict`` becomes a plain dict.
* **rosinality checkpoints** (``checkpoint/NNNNNN.pt`` of https://github.com/rosinality/
  stylegan2-pytorch, ``train.py``): ``torch.save({"g": g.state_dict(), "d": d.state_dict(),
  "g_ema": g_ema.state_dict(), "g_optim": ..., "d_optim": ..., "args": argparse.Namespace,
  "ada_aug_p": float})``; converted official weights (``convert_weight.py``) hold ``g_ema`` and
  ``latent_avg``. Read with ``torch.load(weights_only=True)``, ``argparse.Namespace`` allowed and
  turned into a dict.

Every other global a file names is refused with one line naming the file and the global: a
crafted pickle cannot run code here.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxraug.errors import DataError

NVLABS_PKL = "nvlabs-pkl"
ROSINALITY_PT = "rosinality-pt"
#: The persistence format version of torch_utils/persistence.py (``_version = 6``) in both NVlabs repos.
PERSISTENCE_VERSION = 6


class _Refused(Exception):
    """A global the snapshot reader does not load (carried out of the unpickler)."""


@dataclass
class PersistentRecord:
    """What an NVlabs persistence record holds, as data: the class name and the module's state."""

    class_name: str
    state: dict[str, Any]

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every parameter and buffer below this module, named like ``state_dict()`` keys."""
        out: dict[str, torch.Tensor] = {}
        for key in ("_parameters", "_buffers"):
            for name, value in (self.state.get(key) or {}).items():
                if isinstance(value, torch.Tensor):
                    out[prefix + name] = value.detach()
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, PersistentRecord):
                out.update(child.tensors(f"{prefix}{name}."))
        return out

    def attr(self, name: str, default: Any = None) -> Any:
        """A plain attribute of the module (``w_dim``, ``img_resolution``, ``bias_gain``...)."""
        return self.state.get(name, default)

    def child(self, dotted: str) -> PersistentRecord | None:
        node: PersistentRecord | None = self
        for part in dotted.split("."):
            nxt = (node.state.get("_modules") or {}).get(part) if node is not None else None
            node = nxt if isinstance(nxt, PersistentRecord) else None
        return node


@dataclass
class ForeignSnapshot:
    """A snapshot file of another project, as inert tensors and plain values."""

    path: Path
    format: str  # NVLABS_PKL or ROSINALITY_PT
    #: Network name ("G", "G_ema", "D" for NVlabs; "g", "g_ema", "d" for rosinality) -> tensors.
    networks: dict[str, dict[str, torch.Tensor]]
    #: NVlabs: network name -> its top-level record (attributes such as ``c_dim``).
    records: dict[str, PersistentRecord] = field(default_factory=dict)
    #: Everything else the file holds that is plain data (``training_set_kwargs``, ``args``...).
    extra: dict[str, Any] = field(default_factory=dict)


class _EasyDict(dict):
    """``dnnlib.util.EasyDict`` as a plain dict (attribute state, if any, is dropped)."""

    def __setstate__(self, state: Any) -> None:
        pass


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without its ``weights_only=False``."""
    if not isinstance(data, bytes | bytearray):
        raise _Refused("torch.storage._load_from_bytes (not given bytes)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise _Refused(f"a storage whose bytes name {_global_in(exc)}") from None


def _global_in(exc: BaseException) -> str:
    """The global torch's weights-only unpickler refused, from its message."""
    text = str(exc)
    return text.split("GLOBAL ", 1)[1].split()[0] if "GLOBAL " in text else "a global it does not load"


def _storage_ok(storage: Any) -> Any:
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise _Refused("torch._utils._rebuild_tensor_v2 (not given a storage)")
    return storage


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without the pickled backward hooks and metadata."""
    return torch._utils._rebuild_tensor_v2(
        _storage_ok(storage), int(offset), tuple(size), tuple(stride), False, collections.OrderedDict()
    )


def _parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter(_with_state)``: the values only, as a plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise _Refused("torch._utils._rebuild_parameter (not given a tensor)")
    return data.detach()


def _persistent(meta: Any) -> PersistentRecord:
    """``torch_utils.persistence._reconstruct_persistent_obj``, as data: ``module_src`` is never run."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _Refused("torch_utils.persistence._reconstruct_persistent_obj (not a class record)")
    if meta.get("version") != PERSISTENCE_VERSION:
        raise _Refused(
            f"torch_utils.persistence._reconstruct_persistent_obj (record version {meta.get('version')!r}, "
            f"expected {PERSISTENCE_VERSION})"
        )
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not isinstance(state, dict):
        raise _Refused("torch_utils.persistence._reconstruct_persistent_obj (no class name or state)")
    return PersistentRecord(name, dict(state))


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's own array/dtype/scalar reconstruction (stylegan3 modules keep numpy attributes)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return {}
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _np_reconstruct
        out[(mod, "scalar")] = _np_scalar
    return out


def _np_reconstruct(cls: Any, shape: Any, dtype: Any) -> Any:
    import numpy as np

    if cls is not np.ndarray:
        raise _Refused("numpy.core.multiarray._reconstruct (not of numpy.ndarray)")
    # numpy pickles an array as an empty one (shape (0,)) whose __setstate__ then brings the real
    # shape and bytes (numpy/_core/src/multiarray/methods.c array_reduce), so the shape given here is
    # ignored: a crafted file cannot make it allocate terabytes before the data is checked
    return np.ndarray.__new__(np.ndarray, (0,), dtype)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise _Refused("numpy.core.multiarray.scalar (not a plain number)")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _tensor,
        ("torch._utils", "_rebuild_parameter"): _parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    }
    allowed.update(_numpy_globals())
    return allowed


class _SnapshotUnpickler(pickle.Unpickler):
    """Loads tensors, containers and NVlabs persistence records; refuses every other global."""

    _ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self._ALLOWED.get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {str(pid)[:40]!r}")


def _refusal(path: Path, what: str) -> DataError:
    return DataError(
        f"snapshot {path}: refused: it holds code or objects cxraug does not load (it names {what}: "
        "not a tensor, a container or a StyleGAN persistence record), and nothing in it was run. Use a "
        "checkpoint written by cxraug or a StyleGAN snapshot as published (NVlabs .pkl, rosinality "
        ".pt); for weights from elsewhere, re-save them in an environment you trust as a plain state "
        "dict of tensors"
    )


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def snapshot_kind(path: Path) -> str | None:
    """NVLABS_PKL or ROSINALITY_PT when ``path`` looks like one of them (by name and first bytes).

    cxraug's own checkpoints are zip archives too; a rosinality checkpoint is told apart by its
    top-level keys, which needs the archive's ``data.pkl`` and is checked by :func:`read_snapshot`.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return None
    if path.suffix.lower() == ".pkl" and head[:1] == b"\x80":
        return NVLABS_PKL
    if path.suffix.lower() == ".pt" and _is_zip(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if not names:
                    return None
                data = zf.read(names[0])
        except (zipfile.BadZipFile, OSError):
            return None
        # rosinality's top-level keys; cxraug checkpoints have "format" and "networks" instead
        if b"g_ema" in data and not (b"networks" in data and b"format" in data):
            return ROSINALITY_PT
    return None


def read_snapshot(path: Path) -> ForeignSnapshot:
    """Read an NVlabs ``.pkl`` or a rosinality ``.pt`` (see the module docstring); DataError if not."""
    path = Path(path)
    kind = snapshot_kind(path)
    if kind == NVLABS_PKL:
        return _read_nvlabs(path)
    if kind == ROSINALITY_PT:
        return _read_rosinality(path)
    raise DataError(f"snapshot {path}: not an NVlabs network pickle (.pkl) or a rosinality checkpoint (.pt)")


def _read_nvlabs(path: Path) -> ForeignSnapshot:
    try:
        with open(path, "rb") as fh:
            data = _SnapshotUnpickler(fh).load()
    except _Refused as exc:
        raise _refusal(path, str(exc)) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        RuntimeError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise DataError(
            f"snapshot {path}: corrupt or truncated network pickle ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"snapshot {path}: not an NVlabs network pickle (no dict of networks inside)")
    records = {k: v for k, v in data.items() if isinstance(v, PersistentRecord)}
    if "G_ema" not in records:
        raise DataError(
            f"snapshot {path}: no G_ema network in it (keys: {', '.join(map(str, data)) or 'none'}); "
            "use a network-snapshot-*.pkl written by stylegan2-ada-pytorch or stylegan3"
        )
    networks = {name: rec.tensors() for name, rec in records.items() if name in ("G", "G_ema", "D")}
    extra = {k: v for k, v in data.items() if not isinstance(v, PersistentRecord)}
    return ForeignSnapshot(path, NVLABS_PKL, networks, records, extra)


def _read_rosinality(path: Path) -> ForeignSnapshot:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, _global_in(exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise DataError(f"snapshot {path}: corrupt or truncated ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("g_ema"), dict):
        raise DataError(f"snapshot {path}: no g_ema state dict in it; not a rosinality checkpoint")
    networks = {
        k: {n: t for n, t in v.items() if isinstance(t, torch.Tensor)}
        for k, v in data.items()
        if k in ("g", "g_ema", "d") and isinstance(v, dict)
    }
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in networks or key.endswith("_optim"):
            continue
        extra[key] = vars(value) if isinstance(value, argparse.Namespace) else value
    return ForeignSnapshot(path, ROSINALITY_PT, networks, {}, extra)
