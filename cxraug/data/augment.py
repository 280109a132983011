"""``cxraug augment``: a new prepared dataset whose training split adds classic and synthetic images.

Validation and test rows (and their image bytes) are copied unchanged: augmented images only ever
enter the training split.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxraug import __version__
from cxraug.data.prepared import FORMAT_VERSION, PreparedDataset, swap_in, write_manifest
from cxraug.errors import DataError, OptionsError
from cxraug.fileio import file_sha256, open_npy_memmap, work_folder_name, writing_into
from cxraug.imageio import array_sha256, perceptual_hash
from cxraug.interfaces import Augmenter, AugmentRequest, AugmentServices
from cxraug.options import to_jsonable
from cxraug.ui import progress_bar
from cxraug.workspace import Workspace, check_name


@dataclass
class AugmentStep:
    """One augmenter and how many images per label it must add."""

    augmenter: Augmenter
    counts: dict[str, int]


def balanced_counts(current: dict[str, int], total: int, labels: list[str]) -> dict[str, int]:
    """Split ``total`` new images over ``labels`` so the smallest classes are filled first."""
    counts = {lb: current.get(lb, 0) for lb in labels}
    added = dict.fromkeys(labels, 0)
    for _ in range(total):
        lb = min(labels, key=lambda x: (counts[x], labels.index(x)))
        counts[lb] += 1
        added[lb] += 1
    return added


def augment_dataset(
    workspace: Workspace,
    source: PreparedDataset,
    steps: list[AugmentStep],
    *,
    name: str,
    seed: int,
    force: bool = False,
    services: AugmentServices | None = None,
) -> PreparedDataset:
    """Write dataset ``name``: the source's rows unchanged plus every step's new training images.

    ``services`` is what every step's augmenter gets as ``request.services`` (workspace, registry,
    device, and the GAN run for augmenters that use one).
    """
    check_name(name)
    services = services if services is not None else AugmentServices()
    target = workspace.dataset_dir(name)
    if target.resolve() == source.path.resolve():
        raise OptionsError(f"--name {name!r} is the source dataset; choose a new name")
    for step in steps:
        unknown = [lb for lb, n in step.counts.items() if n and lb not in source.classes]
        if unknown:
            raise OptionsError(
                f"label(s) {', '.join(unknown)} are not classes of dataset {source.name!r} "
                f"({', '.join(source.classes)})"
            )
    data_dir = workspace.writable_data_dir()
    with workspace.dataset_lock(name):  # one writer per dataset name (see prepare_dataset)
        workspace.remove_stale_work_folders(holding=name)
        if target.exists() and not force:
            raise DataError(
                f"dataset {name!r} already exists at {target}; pass --force to replace it or choose "
                "another --name"
            )
        tmp = data_dir / work_folder_name(name)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with writing_into(tmp, target):
                _augment_into(tmp, target, source, steps, seed, services)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return PreparedDataset(target)


def _augment_into(
    tmp: Path,
    target: Path,
    source: PreparedDataset,
    steps: list[AugmentStep],
    seed: int,
    services: AugmentServices,
) -> None:
    name = target.name
    train_idx = source.indices("train")
    train_images = np.asarray(source.images[train_idx])
    train_labels = [source.rows[i]["label"] for i in train_idx]
    n_new = sum(sum(s.counts.values()) for s in steps)
    tmp.mkdir(parents=True)
    size = source.size
    images = open_npy_memmap(tmp / "images.npy", (len(source.rows) + n_new, size, size))
    images[: len(source.rows)] = source.images
    rows: list[dict[str, Any]] = [dict(r) for r in source.rows]
    out = len(source.rows)
    with progress_bar() as progress:
        for k, step in enumerate(steps):
            total = sum(step.counts.values())
            if total == 0:
                continue
            task = progress.add_task(f"{step.augmenter.name}: {total} images", total=total)
            request = AugmentRequest(
                images=train_images,
                labels=train_labels,
                counts=dict(step.counts),
                seed=seed + 7919 * k,
                size=size,
                services=services,
            )
            made: Counter[str] = Counter()
            for item in step.augmenter.augment(request):
                img = np.asarray(item.image)
                if img.shape != (size, size) or img.dtype != np.uint8:
                    raise RuntimeError(
                        f"augmenter {step.augmenter.name} returned {img.dtype} {img.shape}, "
                        f"expected uint8 {(size, size)}"
                    )
                if made[item.label] >= step.counts.get(item.label, 0):
                    raise RuntimeError(
                        f"augmenter {step.augmenter.name} made more {item.label} images than asked"
                    )
                images[out] = img
                rows.append(_row(item, img, source, train_idx, step.augmenter.name))
                made[item.label] += 1
                out += 1
                progress.advance(task)
            short = {lb: n - made[lb] for lb, n in step.counts.items() if made[lb] != n}
            if short:
                raise RuntimeError(f"augmenter {step.augmenter.name} fell short: {short}")
    images.flush()
    del images
    write_manifest(tmp / "manifest.csv", rows)
    counts = {
        s: dict(sorted(Counter(r["label"] for r in rows if r["split"] == s).items()))
        for s in ("train", "val", "test")
    }
    info = {
        **{k: v for k, v in source.info.items() if k not in ("manifest_sha256",)},
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
        "cxraug_version": __version__,
        "counts": counts,
        "augmented_from": {
            "name": source.name,
            "path": str(source.path),
            "manifest_sha256": file_sha256(source.path / "manifest.csv"),
        },
        "augment": {
            "seed": seed,
            "steps": [_step_info(s, services) for s in steps],
        },
        "manifest_sha256": file_sha256(tmp / "manifest.csv"),
    }
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    swap_in(tmp, target)


def _step_info(step: AugmentStep, services: AugmentServices) -> dict[str, Any]:
    """How a step is recorded in info.json, with the GAN run it was handed, if it used one."""
    info = {
        "augmenter": step.augmenter.name,
        "origin": step.augmenter.origin,
        "counts": step.counts,
        "options": to_jsonable(step.augmenter.options),
    }
    if step.augmenter.uses_gan_run and services.gan_run is not None:
        # the run may not be in the options (handed over by the core), so record it here
        info["gan_run"] = str(services.gan_run)
    return info


def _row(
    item: Any, img: np.ndarray, source: PreparedDataset, train_idx: np.ndarray, augmenter: str
) -> dict[str, Any]:
    digest = array_sha256(img)
    prov = {k: str(v) for k, v in item.provenance.items()}
    patient, src, original = "", augmenter, f"{augmenter}:{item.label}:{prov.get('index', '')}"
    if "source_index" in prov:  # derived from a real training image: same patient, same split
        parent = source.rows[int(train_idx[int(prov["source_index"])])]
        patient, src = parent["patient_id"], parent["source"]
        original = f"{augmenter}({parent['original']})#{prov.get('index', '')}"
        prov["parent_id"] = parent["id"]
    return {
        "id": digest[:16],
        "split": "train",
        "label": item.label,
        "patient_id": patient,
        "source": src,
        "view": "",
        "original": original,
        "sha256": digest,
        "phash": f"{perceptual_hash(img):016x}",
        "origin": item.origin,
        "provenance": json.dumps(prov, sort_keys=True),
    }


def origin_counts(dataset: PreparedDataset, split: str = "train") -> dict[str, dict[str, int]]:
    """Label -> origin -> images, for one split."""
    out: dict[str, dict[str, int]] = {}
    for r in dataset.rows:
        if r["split"] == split:
            out.setdefault(r["label"], {}).setdefault(r["origin"] or "real", 0)
            out[r["label"]][r["origin"] or "real"] += 1
    return out
