"""``cxraug generate``: stream images from a GAN run or checkpoint into class folders, resumably."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from cxraug.errors import DataError, OptionsError, PluginError
from cxraug.fileio import atomic_write, ensure_writable, file_sha256, remove_orphan_temps, writing_into
from cxraug.interfaces import GAN, GANSpec
from cxraug.registry import Registry
from cxraug.runlock import RunLock
from cxraug.snapshotio import read_snapshot, snapshot_kind
from cxraug.training.checkpoint import safe_load
from cxraug.training.generator_file import is_safetensors, load_generator_file
from cxraug.training.plots import to_uint8
from cxraug.ui import progress_bar

MANIFEST_FIELDS = (
    "file",
    "label",
    "index",
    "seed",
    "truncation",
    "arch",
    "checkpoint",
    "checkpoint_sha256",
)


@dataclass
class LoadedGenerator:
    gan: GAN
    checkpoint: Path
    sha256: str
    arch: str
    labels: list[str]


def load_generator(path: Path, registry: Registry, device: torch.device) -> LoadedGenerator:
    """Rebuild a GAN from a checkpoint (architecture, options and labels are stored in it)."""
    if is_safetensors(path):  # a generator written by `cxraug export --format safetensors`
        gan, arch, labels = load_generator_file(path, registry, device)
        return LoadedGenerator(gan, path, file_sha256(path), arch, labels)
    if snapshot_kind(path):
        return load_snapshot_generator(path, registry, device)
    other = _other_export(path)
    if other:
        raise DataError(
            f"checkpoint {path}: {other} export, for runtimes without cxraug; generate --checkpoint "
            "reads the safetensors export (`cxraug export RUN`, the default format) or a run's ckpt-*.pt"
        )
    state = safe_load(path, map_location=device)
    if state.get("kind") == "classifier" or "networks" not in state or "spec" not in state:
        raise DataError(f"checkpoint {path}: not a GAN checkpoint (give a GAN run or its ckpt-*.pt)")
    cls = registry.gan(state["arch"])
    try:
        options = cls.Options(**state["options"])
    except ValidationError as exc:
        raise DataError(
            f"checkpoint {path}: its options no longer validate ({exc.errors()[0]['msg']})"
        ) from None
    spec_d = state["spec"]
    spec = GANSpec(
        image_size=spec_d["image_size"],
        labels=list(spec_d["labels"]),
        channels=spec_d.get("channels", 1),
        device=str(device),
    )
    gan = cls(options, spec)
    try:
        for name, module in gan.networks().items():
            module.load_state_dict(state["networks"][name])
    except (KeyError, RuntimeError) as exc:
        raise DataError(f"checkpoint {path}: networks do not match ({str(exc).splitlines()[0]})") from None
    return LoadedGenerator(gan, path, file_sha256(path), state["arch"], list(spec_d["labels"]))


def _other_export(path: Path) -> str | None:
    """'an ONNX' / 'a TorchScript' when ``path`` is one of `cxraug export`'s other formats.

    A TorchScript archive is a zip with a ``constants.pkl`` record (how torch.serialization's
    ``_is_torchscript_zip`` tells it apart); ONNX files (protobuf, no magic bytes) by their suffix.
    """
    if Path(path).suffix.lower() == ".onnx":
        return "an ONNX"
    try:
        with zipfile.ZipFile(path) as zf:
            if any(name.endswith("constants.pkl") for name in zf.namelist()):
                return "a TorchScript"
    except (zipfile.BadZipFile, OSError):
        pass
    return None


def load_snapshot_generator(path: Path, registry: Registry, device: torch.device) -> LoadedGenerator:
    """A GAN built from another project's snapshot by the first GAN that reads its format."""
    snapshot = read_snapshot(path)
    for name in registry.names("gan"):
        try:
            cls = registry.gan(name)
        except PluginError:  # a plugin that failed to load reads nothing
            continue
        if snapshot.format in getattr(cls, "snapshot_formats", ()):
            gan = cls.from_snapshot(snapshot, str(device))
            return LoadedGenerator(gan, path, file_sha256(path), name, list(gan.spec.labels))
    raise DataError(
        f"checkpoint {path}: a {snapshot.format} snapshot, and no installed GAN reads that format"
    )


def generators_from(
    paths: list[Path], registry: Registry, device: torch.device
) -> dict[str, tuple[LoadedGenerator, int]]:
    """Label -> (generator, label index within it) for checkpoint files (one per model)."""
    out: dict[str, tuple[LoadedGenerator, int]] = {}
    for path in paths:
        loaded = load_generator(path, registry, device)
        for i, label in enumerate(loaded.labels):
            out[label] = (loaded, i)
    return out


def latent_generator(seed: int, label_index: int, index: int) -> torch.Generator:
    """Image ``index`` of a label always gets the same latent, whatever the batch size."""
    return torch.Generator().manual_seed((seed * 1_000_003 + label_index * 10_000_019 + index) % (2**63))


def read_generated_manifest(out: Path) -> list[dict[str, str]]:
    path = out / "manifest.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class _ManifestAppender:
    """Appends whole batches of rows to manifest.csv: a failed write (a full disk) is cut back to the
    last complete batch, so the manifest never ends in half a row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> _ManifestAppender:
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 (closed in __exit__)
        if self._fh.seek(0, os.SEEK_END) == 0:
            self._write(_csv_text(None))
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def append(self, rows: list[dict[str, Any]]) -> None:
        self._write(_csv_text(rows))

    def _write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        start = self._fh.tell()
        try:
            while data:
                data = data[self._fh.write(data) :]
        except BaseException:
            with contextlib.suppress(OSError):
                self._fh.truncate(start)
            raise


def _csv_text(rows: list[dict[str, Any]] | None) -> str:
    """The manifest's header (rows None) or rows as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    if rows is None:
        writer.writeheader()
    else:
        writer.writerows(rows)
    return buffer.getvalue()


def _save_png(f: Any, image: np.ndarray) -> None:
    Image.fromarray(image, "L").save(f, format="PNG")


def generate_images(
    generators: dict[str, tuple[LoadedGenerator, int]],
    counts: dict[str, int],
    out: Path,
    *,
    seed: int,
    truncation: float,
    batch_size: int = 64,
) -> dict[str, int]:
    """Write ``counts[label]`` PNGs per label into ``out/label/``; returns how many were new.

    A re-run with the same arguments skips images already written; one with a different
    checkpoint, seed or truncation into the same folder is refused.
    """
    if truncation <= 0:
        raise OptionsError(f"--truncation {truncation}: must be > 0 (1 = no truncation, 0.7 is common)")
    for label in counts:
        if label not in generators:
            raise OptionsError(
                f"label {label!r} (--label/--per-class): this GAN generates {', '.join(generators)}"
            )
    ensure_writable(out, "output folder")
    # One writer per folder: two runs into it at once would both append to its manifest.
    with RunLock(out), writing_into(out):
        for label in counts:  # PNGs a killed run left half-written (only where it writes PNGs)
            remove_orphan_temps(out / label, recursive=False)
        return _generate_into(
            generators, counts, out, seed=seed, truncation=truncation, batch_size=batch_size
        )


def _generate_into(
    generators: dict[str, tuple[LoadedGenerator, int]],
    counts: dict[str, int],
    out: Path,
    *,
    seed: int,
    truncation: float,
    batch_size: int,
) -> dict[str, int]:
    existing = read_generated_manifest(out)
    done: dict[str, set[int]] = {}
    for row in existing:
        loaded, _ = generators.get(row["label"], (None, 0))
        if loaded is None:
            continue
        if (
            row["checkpoint_sha256"] != loaded.sha256
            or int(row["seed"]) != seed
            or abs(float(row["truncation"]) - truncation) > 1e-9
        ):
            raise DataError(
                f"{out}: holds images made with another checkpoint, seed or truncation "
                f"({row['file']}); choose another --out to keep both sets"
            )
        if (out / row["file"]).is_file():
            done.setdefault(row["label"], set()).add(int(row["index"]))
    manifest_path = out / "manifest.csv"
    written: dict[str, int] = {}
    todo = {label: [i for i in range(n) if i not in done.get(label, set())] for label, n in counts.items()}
    total = sum(len(v) for v in todo.values())
    with _ManifestAppender(manifest_path) as manifest, progress_bar() as progress:
        task = progress.add_task(f"generating {total} images", total=total)
        for label, indices in todo.items():
            loaded, label_index = generators[label]
            (out / label).mkdir(exist_ok=True)
            written[label] = 0
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                z = torch.cat(
                    [loaded.gan.sample_latents(1, latent_generator(seed, label_index, i)) for i in chunk]
                )
                labels = torch.full((len(chunk),), label_index, dtype=torch.long)
                device = torch.device(loaded.gan.spec.device)
                images = to_uint8(loaded.gan.generate(z.to(device), labels.to(device), truncation))
                rows = []
                for i, image in zip(chunk, images, strict=True):
                    rel = f"{label}/{label}-s{seed}-{i:06d}.png"
                    atomic_write(out / rel, functools.partial(_save_png, image=image))
                    rows.append(
                        {
                            "file": rel,
                            "label": label,
                            "index": i,
                            "seed": seed,
                            "truncation": truncation,
                            "arch": loaded.arch,
                            "checkpoint": str(loaded.checkpoint),
                            "checkpoint_sha256": loaded.sha256,
                        }
                    )
                manifest.append(rows)
                written[label] += len(chunk)
                progress.advance(task, len(chunk))
    return written
