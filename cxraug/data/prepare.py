"""``cxraug data prepare``: decode every image once into a memory-mappable cache plus a manifest."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import logging
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxraug import __version__
from cxraug.data.dedup import leakage_groups, near_duplicates
from cxraug.data.prepared import FORMAT_VERSION, PreparedDataset, swap_in, write_manifest
from cxraug.data.splits import HELD_OUT_RANK, SPLITS, assign_splits
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.fileio import file_sha256, open_npy_memmap, work_folder_name, writing_into
from cxraug.imageio import RESIZE_FILTER, RESIZE_MODES, ImageReadError, decode_source
from cxraug.interfaces import DatasetAdapter, Record
from cxraug.labels import VOCABULARY, check_label, sort_labels
from cxraug.options import to_jsonable
from cxraug.ui import progress_bar
from cxraug.workspace import Workspace, check_name

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One adapter with its root folder (or file) and resolved options."""

    adapter: DatasetAdapter
    root: Path | None


@dataclass
class PrepareSettings:
    """Everything `data prepare` was asked, recorded in info.json."""

    name: str
    size: int = 256
    resize: str = "pad"
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    classes: tuple[str, ...] = ()
    label_map: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    workers: int = 0
    force: bool = False

    def validate(self) -> None:
        check_name(self.name)
        if not 8 <= self.size <= 2048:
            raise OptionsError(f"--size {self.size}: choose a size between 8 and 2048 pixels")
        if self.resize not in RESIZE_MODES:
            raise OptionsError(f"--resize {self.resize!r}: choose one of {', '.join(RESIZE_MODES)}")
        for src, dst in self.label_map.items():
            check_label(dst, f"--map {src}={dst}")
        for c in self.classes:
            check_label(c, f"--classes {c}")


@dataclass
class PrepareResult:
    dataset: PreparedDataset
    report: dict[str, Any]


def _decode_one(args: tuple[Any, int, str]) -> tuple[bool, Any, str, int]:
    source, size, mode = args
    try:
        img, digest, phash = decode_source(source, size, mode)
    except ImageReadError as exc:
        return False, str(exc), "", 0
    return True, img, digest, phash


def _one_thread_per_worker() -> None:
    """Decoding workers run side by side: torch's intra-op threads (in ``resize``) would only contend."""
    import torch

    torch.set_num_threads(1)


def _collect(sources: list[Source], settings: PrepareSettings) -> tuple[list[Record], dict]:
    records: list[Record] = []
    excluded: Counter[str] = Counter()
    notes: list[str] = []
    for source in sources:
        adapter = source.adapter
        if adapter.needs_root and source.root is None:
            raise OptionsError(f"{adapter.name} needs --root pointing at the downloaded dataset folder")
        if source.root is not None and not source.root.exists():
            raise DataError(f"--root {source.root}: no such file or folder")
        n_before = len(records)
        for rec in adapter.records(source.root):
            label = settings.label_map.get(rec.label, rec.label)
            if label not in VOCABULARY:
                raise DataError(f"{adapter.name} produced unknown label {label!r} for {rec.original}")
            if settings.classes and label not in settings.classes:
                excluded[label] += 1
                continue
            if label != rec.label:
                rec = Record(**{**rec.__dict__, "label": label})
            records.append(rec)
        notes.extend(f"{adapter.name}: {note}" for note in adapter.notes())
        if len(records) == n_before:
            log.warning("%s yielded no images under %s", adapter.name, source.root)
    return records, {"excluded_by_class": dict(excluded), "notes": notes}


def _decode_all(
    records: list[Record], settings: PrepareSettings, out: np.ndarray
) -> tuple[list[str], list[int], dict[int, str]]:
    """Decode into ``out`` (rows aligned with records); returns sha256s, phashes, failures."""
    n = len(records)
    digests, phashes = [""] * n, [0] * n
    failures: dict[int, str] = {}
    file_idx = [i for i, r in enumerate(records) if not isinstance(r.image, np.ndarray)]
    array_idx = [i for i, r in enumerate(records) if isinstance(r.image, np.ndarray)]
    workers = settings.workers or min(4, os.cpu_count() or 1)

    def store(i: int, result: tuple[bool, Any, str, int]) -> None:
        ok, payload, digest, phash = result
        if ok:
            out[i] = payload
            digests[i], phashes[i] = digest, phash
        else:
            failures[i] = payload

    def jobs(idx: list[int]) -> Iterator[tuple[Any, int, str]]:
        return ((records[i].image, settings.size, settings.resize) for i in idx)

    with progress_bar() as progress:
        task = progress.add_task(f"decoding {n} images", total=n)
        for i, args in zip(array_idx, jobs(array_idx), strict=True):
            store(i, _decode_one(args))
            progress.advance(task)
        if workers > 1 and len(file_idx) > 64:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_one_thread_per_worker
            ) as pool:
                results = pool.map(_decode_one, jobs(file_idx), chunksize=16)
                for i, result in zip(file_idx, results, strict=True):
                    store(i, result)
                    progress.advance(task)
        else:
            for i, args in zip(file_idx, jobs(file_idx), strict=True):
                store(i, _decode_one(args))
                progress.advance(task)
    return digests, phashes, failures


def prepare_dataset(workspace: Workspace, sources: list[Source], settings: PrepareSettings) -> PrepareResult:
    """Read, decode, deduplicate, split and write a prepared dataset; returns it and its report."""
    settings.validate()
    workspace.writable_data_dir()
    # One writer per dataset name: a second prepare (or augment) of the name is refused, naming
    # the process at work, instead of both writing and one silently replacing the other.
    with workspace.dataset_lock(settings.name):
        workspace.remove_stale_work_folders(holding=settings.name)
        return _prepare_locked(workspace, sources, settings)


def _prepare_locked(workspace: Workspace, sources: list[Source], settings: PrepareSettings) -> PrepareResult:
    final_dir = workspace.dataset_dir(settings.name)
    if final_dir.exists() and not settings.force:
        raise DataError(
            f"dataset {settings.name!r} already exists at {final_dir}; pass --force to replace it "
            "or choose another --name"
        )
    records, collected = _collect(sources, settings)
    if not records:
        raise DataError(
            "no images found: check --root and the adapter's options "
            "(`cxraug plugins list --kind dataset`), and that --classes matches the labels"
        )
    tmp_dir = workspace.data_dir / work_folder_name(settings.name)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        with writing_into(tmp_dir, final_dir):  # "disk full at data/NAME", not at a hidden folder
            tmp_dir.mkdir(parents=True)
            return _prepare_into(tmp_dir, final_dir, records, collected, sources, settings)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _prepare_into(
    tmp_dir: Path,
    final_dir: Path,
    records: list[Record],
    collected: dict,
    sources: list[Source],
    settings: PrepareSettings,
) -> PrepareResult:
    n, size = len(records), settings.size
    scratch_path = tmp_dir / "decoded.npy"
    scratch = open_npy_memmap(scratch_path, (n, size, size))
    digests, phashes, failures = _decode_all(records, settings, scratch)
    skipped = [
        {"original": records[i].original, "source": records[i].source, "reason": reason}
        for i, reason in sorted(failures.items())
    ]
    if skipped and settings.strict:
        listing = "\n".join(f"  {s['original']}: {s['reason']}" for s in skipped[:20])
        raise DataError(f"--strict: {len(skipped)} file(s) could not be read:\n{listing}")
    ok = [i for i in range(n) if i not in failures]

    # Exact duplicates: keep the first copy; copies that disagree on the label are all dropped.
    by_digest: dict[str, list[int]] = {}
    for i in ok:
        by_digest.setdefault(digests[i], []).append(i)
    dropped: dict[int, str] = {}
    exact_pairs = 0
    for copies in by_digest.values():
        if len(copies) < 2:
            continue
        exact_pairs += len(copies) - 1  # counted whether or not a copy is dropped
        labels = {records[i].label for i in copies}
        if len(labels) > 1:
            for i in copies:
                dropped[i] = f"identical image carries conflicting labels {sorted(labels)}"
        else:
            # Keep the copy in the most held-out official split, so a published test set stays whole.
            # Copies inside that same official split stay too: official splits stay as published.
            keep = max(copies, key=lambda i: (HELD_OUT_RANK.get(records[i].split or "", -1), -i))
            for i in copies:
                same_official = records[i].split is not None and records[i].split == records[keep].split
                if i != keep and not same_official:
                    dropped[i] = f"exact duplicate of {records[keep].original}"
    kept = [i for i in ok if i not in dropped]

    hashes = np.array([phashes[i] for i in kept], dtype=np.uint64)
    near = near_duplicates(hashes, lambda k: np.asarray(scratch[kept[k]]))  # noqa: F821 (del below)
    groups = leakage_groups(
        [f"{records[i].source}:{records[i].patient_id}" if records[i].patient_id else None for i in kept],
        [digests[i] for i in kept],
        near,
    )
    splits, leak_drops = assign_splits(
        [records[i].label for i in kept],
        [records[i].split for i in kept],
        groups,
        settings.ratios,
        settings.seed,
    )
    for k, reason in leak_drops.items():
        dropped[kept[k]] = reason
    final = [(kept[k], splits[k]) for k in range(len(kept)) if k not in leak_drops]
    final.sort(key=lambda t: (SPLITS.index(t[1]), t[0]))

    images = open_npy_memmap(tmp_dir / "images.npy", (len(final), size, size))
    rows: list[dict[str, Any]] = []
    for out_i, (i, split) in enumerate(final):
        images[out_i] = scratch[i]
        rec = records[i]
        rows.append(
            {
                "id": digests[i][:16],
                "split": split,
                "label": rec.label,
                "patient_id": rec.patient_id,
                "source": rec.source,
                "view": rec.view,
                "original": rec.original,
                "sha256": digests[i],
                "phash": f"{phashes[i]:016x}",
                "origin": "real",
                "provenance": json.dumps(rec.extra, sort_keys=True) if rec.extra else "",
            }
        )
    images.flush()
    del images, scratch
    scratch_path.unlink()
    write_manifest(tmp_dir / "manifest.csv", rows)

    classes = sort_labels({r["label"] for r in rows})
    counts = {s: dict(sorted(Counter(r["label"] for r in rows if r["split"] == s).items())) for s in SPLITS}
    patients = {f"{r['source']}:{r['patient_id']}" for r in rows if r["patient_id"]}
    official = any(rec.split is not None for rec in records)
    report = {
        "name": settings.name,
        "images": len(rows),
        "counts": counts,
        "patients": len(patients),
        "rows_without_patient_id": sum(1 for r in rows if not r["patient_id"]),
        "skipped": skipped,
        "dropped": [
            {"original": records[i].original, "source": records[i].source, "reason": reason}
            for i, reason in sorted(dropped.items())
        ],
        "exact_duplicates": exact_pairs,
        "near_duplicate_pairs": [
            {
                "a": records[kept[a]].original,
                "b": records[kept[b]].original,
                "correlation": round(c, 4),
            }
            for a, b, c in near
        ],
        "excluded_by_class": collected["excluded_by_class"],
        "notes": collected["notes"],
        "split_method": (
            "official split of the source(s); rows without one by patient-level stratified ratios"
            + (
                "; no official validation split, so one was carved from the official train split "
                f"({settings.ratios[1] / (settings.ratios[0] + settings.ratios[1]):.0%} of it, "
                "patient-level, stratified)"
                if not any(r.split == "val" for r in records) and settings.ratios[1] > 0
                else ""
            )
            if official
            else f"patient-level stratified ratios {list(settings.ratios)} (seed {settings.seed})"
        ),
        "resize": (
            f"aspect ratio kept; longer side scaled to {size} px and padded with black"
            if settings.resize == "pad"
            else f"aspect ratio kept; shorter side scaled to {size} px and centre-cropped"
        )
        + f"; filter: {RESIZE_FILTER}",
    }
    synthetic = any(s.adapter.synthetic for s in sources)
    info = {
        "format_version": FORMAT_VERSION,
        "name": settings.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
        "cxraug_version": __version__,
        "size": size,
        "resize": settings.resize,
        "classes": classes,
        "synthetic": synthetic,
        "counts": counts,
        "sources": [
            {
                "adapter": s.adapter.name,
                "root": str(s.root.resolve()) if s.root else None,
                "options": to_jsonable(s.adapter.options),
            }
            for s in sources
        ],
        "settings": to_jsonable(
            {
                "size": size,
                "resize": settings.resize,
                "split": list(settings.ratios),
                "seed": settings.seed,
                "classes": list(settings.classes),
                "map": settings.label_map,
                "strict": settings.strict,
            }
        ),
        "manifest_sha256": file_sha256(tmp_dir / "manifest.csv"),
    }
    (tmp_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (tmp_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (tmp_dir / "prepare-report.md").write_text(render_report(report, synthetic), encoding="utf-8")

    # Swap in the new dataset only now that it is complete; the old one goes only on --force.
    swap_in(tmp_dir, final_dir)
    try:
        dataset = PreparedDataset(final_dir)
    except CxrError as exc:  # pragma: no cover - would be a bug in the split logic
        raise RuntimeError(f"prepared dataset failed its own checks: {exc}") from exc
    return PrepareResult(dataset, report)


def render_report(report: dict[str, Any], synthetic: bool) -> str:
    """The prepare report as Markdown."""
    lines = [f"# Prepare report: {report['name']}", ""]
    if synthetic:
        lines += ["**Synthetic demo data (phantom images), not real chest X-rays.**", ""]
    lines += [
        f"- images: {report['images']}",
        f"- patients: {report['patients']} (rows without a patient id: {report['rows_without_patient_id']})",
        f"- split: {report['split_method']}",
        f"- resize: {report['resize']}",
        f"- exact duplicate copies found: {report['exact_duplicates']}",
        f"- near-duplicate pairs kept in one split: {len(report['near_duplicate_pairs'])}",
        f"- unreadable files skipped: {len(report['skipped'])}",
        f"- rows dropped: {len(report['dropped'])}",
        "",
        "| split | " + " | ".join(sorted({k for c in report["counts"].values() for k in c})) + " |",
    ]
    labels = sorted({k for c in report["counts"].values() for k in c})
    lines.append("|---" * (len(labels) + 1) + "|")
    for split, counts in report["counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(counts.get(lb, 0)) for lb in labels) + " |")
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report["excluded_by_class"]:
        lines += ["", "## Excluded by --classes", ""]
        lines += [f"- {k}: {v}" for k, v in report["excluded_by_class"].items()]
    for title, key in (("Skipped (unreadable)", "skipped"), ("Dropped", "dropped")):
        if report[key]:
            lines += ["", f"## {title}", ""]
            lines += [f"- `{s['original']}` ({s['source']}): {s['reason']}" for s in report[key]]
    return "\n".join(lines) + "\n"
