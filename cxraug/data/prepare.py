"""``cxraug data prepare``: decode every image once into a memory-mappable cache plus a manifest."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxraug import __version__
from cxraug.data.decode_cache import DecodeCache, Entry, cache_folder, source_key
from cxraug.data.dedup import (
    DESCRIPTOR_LENGTH,
    SAME_PICTURE_SCORE,
    UnionFind,
    describe,
    leakage_groups,
    near_duplicates,
)
from cxraug.data.paths import DatasetRoot
from cxraug.data.prepared import FORMAT_VERSION, PreparedDataset, swap_in, write_manifest
from cxraug.data.splits import HELD_OUT_RANK, SPLITS, assign_splits
from cxraug.dicomio import DEFAULT_VOI, VOI_POLICIES
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.fileio import check_free, file_sha256, work_folder_name, write_npy_rows, writing_into
from cxraug.imageio import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_CEILING,
    RESIZE_FILTER,
    RESIZE_MODES,
    ImageReadError,
    decode_source,
)
from cxraug.interfaces import DatasetAdapter, Record
from cxraug.labels import (
    MULTILABEL_POLICIES,
    VOCABULARY,
    check_label,
    is_label_name,
    resolve_findings,
    sort_labels,
)
from cxraug.options import to_jsonable
from cxraug.ui import progress_bar
from cxraug.workspace import Workspace, check_name

log = logging.getLogger(__name__)

#: What to do with a duplicate group (identical or near-identical images) whose copies disagree on
#: the label: drop every copy, keep the first copy (in source order) and its same-label copies, or
#: stop with an error. Either way the group is listed in the report.
CONFLICT_POLICIES: tuple[str, ...] = ("drop", "keep-first", "error")


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
    conflicts: str = "drop"
    max_pixels: int = DEFAULT_MAX_PIXELS
    multilabel: str = "skip"
    dicom_voi: str = DEFAULT_VOI

    def validate(self, allowed: tuple[str, ...] = ()) -> None:
        """Check every setting; ``allowed`` adds the labels the sources' adapters declare."""
        check_name(self.name)
        if not 8 <= self.size <= 2048:
            raise OptionsError(f"--size {self.size}: choose a size between 8 and 2048 pixels")
        if self.resize not in RESIZE_MODES:
            raise OptionsError(f"--resize {self.resize!r}: choose one of {', '.join(RESIZE_MODES)}")
        for src, dst in self.label_map.items():
            check_label(dst, f"--map {src}={dst}", allowed)
        for c in self.classes:
            check_label(c, f"--classes {c}", allowed)
        if self.multilabel not in MULTILABEL_POLICIES:
            raise OptionsError(
                f"--multilabel {self.multilabel!r}: choose one of {', '.join(MULTILABEL_POLICIES)}"
            )
        if self.conflicts not in CONFLICT_POLICIES:
            raise OptionsError(
                f"--conflicts {self.conflicts!r}: choose one of {', '.join(CONFLICT_POLICIES)}"
            )
        if not 1 <= self.max_pixels <= MAX_PIXELS_CEILING:
            raise OptionsError(
                f"--max-pixels {self.max_pixels}: choose a pixel count between 1 and {MAX_PIXELS_CEILING}"
            )
        if self.dicom_voi not in VOI_POLICIES:
            raise OptionsError(f"--dicom-voi {self.dicom_voi!r}: choose one of {', '.join(VOI_POLICIES)}")


@dataclass
class PrepareResult:
    dataset: PreparedDataset
    report: dict[str, Any]


DecodeResult = tuple[bool, Any, str, int, "np.ndarray | None"]


def _decode_one(args: tuple[Any, int, str, int, str]) -> DecodeResult:
    """(ok, image or reason, sha256, pHash, near-duplicate descriptor), computed in the worker."""
    source, size, mode, max_pixels, dicom_voi = args
    try:
        img, digest, phash = decode_source(source, size, mode, max_pixels, dicom_voi)
    except ImageReadError as exc:
        return False, str(exc), "", 0, None
    return True, img, digest, phash, describe(img)


def _decode_batch(batch: list[tuple[Any, int, str, int, str]]) -> list[DecodeResult]:
    """Several images per task: one pickled round trip per batch, not per (small) image."""
    return [_decode_one(args) for args in batch]


#: Images per worker task, and tasks in flight per worker: enough to keep the workers busy, few
#: enough that memory does not grow with the number of images (results are stored as they come).
BATCH = 32
IN_FLIGHT_PER_WORKER = 4


@contextlib.contextmanager
def _starting_workers() -> Iterator[None]:
    """While decoding workers start: they ignore Ctrl-C (the parent stops them, so one Ctrl-C gives
    one line, not a traceback per worker), and they do not import the parent's ``__main__`` again
    (spawn would: for the ``cxraug`` command that is the whole CLI, seconds per worker)."""
    main = sys.modules.get("__main__")
    saved = dict(main.__dict__) if main is not None else {}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__spec__ = None
        yield
    finally:
        if main is not None:
            for key in ("__file__", "__spec__"):
                if key in saved:
                    main.__dict__[key] = saved[key]
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _one_thread_per_worker() -> None:
    """Decoding workers run side by side: torch's intra-op threads (in ``resize``) would only contend."""
    import torch

    torch.set_num_threads(1)


def declared_labels(sources: list[Source]) -> tuple[str, ...]:
    """The labels the sources' adapters may yield beyond the core vocabulary, checked."""
    extra: list[str] = []
    for source in sources:
        for label in source.adapter.labels():
            if not isinstance(label, str) or not is_label_name(label):
                raise DataError(
                    f"dataset adapter {source.adapter.name!r} declares the label {label!r}; labels are "
                    "lower-case snake_case names (a-z, 0-9, _), at most 40 characters"
                )
            if label not in VOCABULARY and label not in extra:
                extra.append(label)
    return tuple(extra)


def _collect(sources: list[Source], settings: PrepareSettings) -> tuple[list[Record], dict]:
    records: list[Record] = []
    excluded: Counter[str] = Counter()
    multilabel_skipped: Counter[str] = Counter()
    multilabel_resolved: Counter[str] = Counter()
    notes: list[str] = []
    for source in sources:
        adapter = source.adapter
        n_before, yielded = len(records), 0
        root = DatasetRoot(source.root) if source.root is not None else None
        valid = set(VOCABULARY) | set(adapter.labels())
        declared = tuple(adapter.labels())
        for rec in adapter.records(source.root):
            yielded += 1
            if rec.refused is not None and rec.label not in valid:
                # Refused before its label could be read (a malformed label field): listed under
                # skipped, never matched against --classes or --map.
                records.append(rec)
                continue
            findings = tuple(settings.label_map.get(f, f) for f in rec.findings)
            for finding in findings or (settings.label_map.get(rec.label, rec.label),):
                if finding not in valid:
                    raise DataError(
                        f"{adapter.name} produced unknown label {finding!r} for {rec.original} "
                        "(an adapter yields its declared labels(); --map targets must be valid labels)"
                    )
            several = len(set(findings)) > 1
            if several:
                chosen = resolve_findings(findings, settings.multilabel, settings.classes, declared)
                if chosen is None:
                    multilabel_skipped[adapter.name] += 1
                    continue
                label = chosen
            else:
                label = settings.label_map.get(rec.label, rec.label)
            if settings.classes and label not in settings.classes:
                excluded[label] += 1
                continue
            if several:  # counted only when it stays (not when --classes then leaves it out)
                multilabel_resolved[adapter.name] += 1
            if label != rec.label:
                rec = dataclasses.replace(rec, label=label)
            if findings:
                rec = dataclasses.replace(rec, extra={**rec.extra, "findings": "|".join(findings)})
            if root is not None and rec.refused is None and not isinstance(rec.image, np.ndarray):
                # Whatever the adapter, no file outside --root is read (adapters check too, with
                # the label file's line; this catches a third-party adapter that does not).
                escape = root.escapes(rec.image)
                if escape:
                    rec = dataclasses.replace(rec, refused=f"{adapter.name}: {escape}")
            records.append(rec)
        notes.extend(f"{adapter.name}: {note}" for note in adapter.notes())
        if not yielded:
            log.warning("%s yielded no images under %s", adapter.name, source.root)
        elif len(records) == n_before:
            log.warning(
                "%s: none of its %d images is kept (--classes, --multilabel); see the counts below",
                adapter.name,
                yielded,
            )
    multilabel = {
        "policy": settings.multilabel,
        "skipped": sum(multilabel_skipped.values()),
        "skipped_by_source": dict(multilabel_skipped),
        "resolved": sum(multilabel_resolved.values()),
        "resolved_by_source": dict(multilabel_resolved),
    }
    return records, {"excluded_by_class": dict(excluded), "notes": notes, "multilabel": multilabel}


@dataclass
class Decoded:
    """Every record's decoding outcome, aligned with the records: its row in the decode cache."""

    rows: np.ndarray  # int64, -1 where the record failed
    digests: list[str]
    phashes: list[int]
    failures: dict[int, str]
    reused: int = 0


def _decode_all(records: list[Record], settings: PrepareSettings, cache: DecodeCache, shown: Path) -> Decoded:
    """Decode every record not already in ``cache`` (in worker processes), storing each as it comes.

    Refused records (``Record.refused``) are failures without their file being opened; ``shown``
    is the dataset folder a full disk is reported at.
    """
    n = len(records)
    out = Decoded(np.full(n, -1, dtype=np.int64), [""] * n, [0] * n, {})

    def store(i: int, entry: Entry) -> None:
        if entry.error is None:
            out.rows[i] = entry.row
            out.digests[i], out.phashes[i] = entry.sha256, entry.phash
        else:
            out.failures[i] = entry.error

    todo: list[tuple[int, str | None]] = []
    for i, rec in enumerate(records):
        if rec.refused:
            out.failures[i] = rec.refused
            continue
        key = None if isinstance(rec.image, np.ndarray) else source_key(rec.image)
        hit = cache.get(key)
        if hit is None:
            todo.append((i, key))
        else:
            store(i, hit)
            out.reused += 1
    if out.reused:
        log.info("reused %d decoded images from an interrupted prepare (%s)", out.reused, cache.folder)
    workers = settings.workers or min(4, os.cpu_count() or 1)
    # Room for the decoded rows still to come and the final images.npy, before an hour of decoding
    # ends in "disk full" (the writes can still meet a full disk: that is an error too, not a crash).
    check_free(shown, (len(todo) + n) * settings.size**2)

    def args(i: int) -> tuple[Any, int, str, int, str]:
        s = settings
        return (records[i].image, s.size, s.resize, s.max_pixels, s.dicom_voi)

    def keep(i: int, key: str | None, result: DecodeResult) -> None:
        ok, payload, digest, phash, descriptor = result
        if ok:
            store(i, cache.add(key, payload, digest, phash, None, descriptor))
        else:
            store(i, cache.add(key, None, "", 0, payload))

    with progress_bar() as progress:
        task = progress.add_task(f"decoding {n} images", total=n, completed=n - len(todo))
        files = [(i, key) for i, key in todo if not isinstance(records[i].image, np.ndarray)]
        if workers > 1 and len(files) > 2 * BATCH:
            arrays = [(i, key) for i, key in todo if isinstance(records[i].image, np.ndarray)]
            for i, key in arrays:
                keep(i, key, _decode_one(args(i)))
                progress.advance(task)
            batches = [files[k : k + BATCH] for k in range(0, len(files), BATCH)]
            ctx = multiprocessing.get_context("spawn")
            pool = cf.ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_one_thread_per_worker
            )
            pending: deque[tuple[list[tuple[int, str | None]], cf.Future]] = deque()
            try:
                for k, batch in enumerate(batches):
                    # The pool starts a worker per submit until it has them all.
                    with _starting_workers() if k < workers else contextlib.nullcontext():
                        future = pool.submit(_decode_batch, [args(i) for i, _ in batch])
                    pending.append((batch, future))
                    while len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                        _finish(pending.popleft(), keep, progress, task)
                while pending:
                    _finish(pending.popleft(), keep, progress, task)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: only running batches finish
                raise
            pool.shutdown(wait=True)
        else:
            for i, key in todo:
                keep(i, key, _decode_one(args(i)))
                progress.advance(task)
    cache.flush()
    return out


def _finish(
    item: tuple[list[tuple[int, str | None]], cf.Future], keep: Any, progress: Any, task: Any
) -> None:
    batch, future = item
    for (i, key), result in zip(batch, future.result(), strict=True):
        keep(i, key, result)
    progress.advance(task, len(batch))


def prepare_dataset(workspace: Workspace, sources: list[Source], settings: PrepareSettings) -> PrepareResult:
    """Read, decode, deduplicate, split and write a prepared dataset; returns it and its report."""
    check_prepare(workspace, sources, settings)
    workspace.writable_data_dir()
    # One writer per dataset name: a second prepare (or augment) of the name is refused, naming
    # the process at work, instead of both writing and one silently replacing the other.
    with workspace.dataset_lock(settings.name):
        workspace.remove_stale_work_folders(holding=settings.name)
        return _prepare_locked(workspace, sources, settings)


def check_prepare(workspace: Workspace, sources: list[Source], settings: PrepareSettings) -> None:
    """What can be refused before anything is written (and in --dry-run): settings, roots, the name."""
    settings.validate(declared_labels(sources))
    for source in sources:
        name = source.adapter.name
        if source.adapter.needs_root and source.root is None:
            raise OptionsError(f"{name} needs --root pointing at the downloaded dataset folder")
        if source.root is not None and not source.root.exists():
            raise DataError(f"--root {source.root}: no such file or folder")
    _check_name_free(workspace, settings)


def _check_name_free(workspace: Workspace, settings: PrepareSettings) -> None:
    final_dir = workspace.dataset_dir(settings.name)
    if final_dir.exists() and not settings.force:
        raise DataError(
            f"dataset {settings.name!r} already exists at {final_dir}; pass --force to replace it "
            "or choose another --name"
        )


def _nothing_kept(collected: dict[str, Any], settings: PrepareSettings) -> str:
    """Why no image is left, with the counts that say so (the notes are never shown otherwise)."""
    excluded, multi = collected["excluded_by_class"], collected["multilabel"]
    reasons = []
    if excluded:
        found = ", ".join(f"{label} {n}" for label, n in sorted(excluded.items()))
        reasons.append(f"--classes {','.join(settings.classes)} left out every image (labels found: {found})")
    if multi["skipped"]:
        reasons.append(
            f"{multi['skipped']} images with several findings were skipped (--multilabel skip; "
            "first or priority keeps them)"
        )
    if not reasons:
        reasons.append("the adapters yielded no images: check --root and the adapter's options")
    notes = "; ".join(collected["notes"][:3])
    return "no images to prepare: " + "; ".join(reasons) + (f" (notes: {notes})" if notes else "")


def _prepare_locked(workspace: Workspace, sources: list[Source], settings: PrepareSettings) -> PrepareResult:
    _check_name_free(workspace, settings)  # again under the lock: another writer may have finished
    final_dir = workspace.dataset_dir(settings.name)
    records, collected = _collect(sources, settings)
    if not records:
        raise DataError(_nothing_kept(collected, settings))
    tmp_dir = workspace.data_dir / work_folder_name(settings.name)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    cache: DecodeCache | None = None
    try:
        with writing_into(tmp_dir, final_dir):  # "disk full at data/NAME", not at a hidden folder
            tmp_dir.mkdir(parents=True)
            cache = DecodeCache.open(
                cache_folder(workspace.data_dir, settings.name),
                settings.size,
                # everything decoding depends on: other values, other pixels
                {
                    "resize": settings.resize,
                    "max_pixels": settings.max_pixels,
                    "dicom_voi": settings.dicom_voi,
                },
                extra=DESCRIPTOR_LENGTH,
            )
            result = _prepare_into(tmp_dir, final_dir, records, collected, sources, settings, cache)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if cache is not None:
            cache.close()
            if cache.reusable:  # a killed run (SIGKILL) leaves it too: nothing runs then
                log.warning(
                    "prepare stopped; %d decoded images are kept in %s: run the same command again "
                    "to resume without decoding them again",
                    cache.reusable,
                    cache.folder,
                )
            else:
                cache.remove()
        raise
    cache.remove()
    return result


def _prepare_into(
    tmp_dir: Path,
    final_dir: Path,
    records: list[Record],
    collected: dict,
    sources: list[Source],
    settings: PrepareSettings,
    cache: DecodeCache,
) -> PrepareResult:
    n, size = len(records), settings.size
    decoded = _decode_all(records, settings, cache, final_dir)
    digests, phashes, failures, rows_of = decoded.digests, decoded.phashes, decoded.failures, decoded.rows
    pixels = cache.reader()
    skipped = [
        {"original": records[i].original, "source": records[i].source, "reason": reason}
        for i, reason in sorted(failures.items())
    ]
    if skipped and settings.strict:
        listing = "\n".join(f"  {s['original']}: {s['reason']}" for s in skipped[:20])
        raise DataError(f"--strict: {len(skipped)} file(s) were skipped:\n{listing}")
    ok = [i for i in range(n) if i not in failures]
    if not ok:
        first = skipped[0]
        raise DataError(
            f"none of the {n} images could be used ({first['original']}: {first['reason']}"
            f"{f'; and {n - 1} more' if n > 1 else ''}); check --root and the files"
        )

    # Duplicate groups: identical files (one sha256), joined by near-duplicate pixels (found among
    # one copy per sha256: descriptor-index candidates confirmed by aligned band-pass correlation).
    by_digest: dict[str, list[int]] = {}
    for i in ok:
        by_digest.setdefault(digests[i], []).append(i)
    reps = [copies[0] for copies in by_digest.values()]
    near = near_duplicates(pixels.extras_view(rows_of[reps]))
    joined, same_picture = UnionFind(len(reps)), UnionFind(len(reps))
    for match in near:
        joined.union(match.i, match.j)
        if match.score >= SAME_PICTURE_SCORE:
            same_picture.union(match.i, match.j)

    def expand(groups: dict[int, list[int]]) -> list[list[int]]:
        """Groups (of representatives) as record indices, only those with more than one copy."""
        out = []
        for grp in groups.values():
            if len(grp) > 1 or len(by_digest[digests[reps[grp[0]]]]) > 1:
                out.append(sorted(i for k in grp for i in by_digest[digests[reps[k]]]))
        return out

    dup_groups = expand(joined.groups())
    # Labels conflict only between copies of one picture (identical, or re-encoded / re-exposed):
    # merely similar images, which the looser grouping above keeps in one split, keep their labels.
    conflicts, dropped = _resolve_conflicts(
        expand(same_picture.groups()), records, digests, settings.conflicts
    )

    # Exact duplicates: keep one copy (conflicting copies are already resolved above).
    exact_pairs = 0
    first_kept: dict[str, int] = {}
    for digest, copies in by_digest.items():
        exact_pairs += len(copies) - 1  # counted whether or not a copy is dropped
        alive = [i for i in copies if i not in dropped]
        if not alive:
            continue
        # Keep the copy in the most held-out official split, so a published test set stays whole.
        # Copies inside that same official split stay too: official splits stay as published.
        keep = max(alive, key=lambda i: (HELD_OUT_RANK.get(records[i].split or "", -1), -i))
        first_kept[digest] = keep
        for i in alive:
            same_official = records[i].split is not None and records[i].split == records[keep].split
            if i != keep and not same_official:
                dropped[i] = f"exact duplicate of {records[keep].original}"
    kept = [i for i in ok if i not in dropped]
    position = {i: k for k, i in enumerate(kept)}

    # What remains of each duplicate group stays together in one split.
    together: list[tuple[int, int, float]] = []
    for group in dup_groups:
        members = [position[i] for i in group if i in position]
        together += [(members[0], k, 1.0) for k in members[1:]]
    near_report = []
    for match in near:
        ka, kb = first_kept.get(digests[reps[match.i]]), first_kept.get(digests[reps[match.j]])
        if ka is not None and kb is not None:
            near_report.append(
                {
                    "a": records[ka].original,
                    "b": records[kb].original,
                    "correlation": round(match.score, 4),
                    "same_picture": match.score >= SAME_PICTURE_SCORE,
                    "scale": round(match.scale, 3),
                    "rotation_deg": round(match.rotation_deg, 1),
                    "shift_px": [round(match.shift[0] * size, 1), round(match.shift[1] * size, 1)],
                }
            )
    groups = leakage_groups(
        [f"{records[i].source}:{records[i].patient_id}" if records[i].patient_id else None for i in kept],
        [digests[i] for i in kept],
        together,
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

    shape = (len(final), size, size)
    write_npy_rows(tmp_dir / "images.npy", shape, (pixels(int(rows_of[i])) for i, _ in final))
    pixels.close()

    def manifest_rows() -> Iterator[dict[str, Any]]:
        for i, split in final:
            rec = records[i]
            yield {
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

    write_manifest(tmp_dir / "manifest.csv", manifest_rows())

    classes = sort_labels({records[i].label for i, _ in final})
    counts = {
        s: dict(sorted(Counter(records[i].label for i, sp in final if sp == s).items())) for s in SPLITS
    }
    per_patient = Counter(
        f"{records[i].source}:{records[i].patient_id}" for i, _ in final if records[i].patient_id
    )
    patients = set(per_patient)
    official = any(rec.split is not None for rec in records)
    warnings = _split_warnings(counts, per_patient, len(final), settings, official)
    for warning in warnings:
        log.warning("%s", warning)
    report = {
        "name": settings.name,
        "images": len(final),
        "counts": counts,
        "patients": len(patients),
        "rows_without_patient_id": sum(1 for i, _ in final if not records[i].patient_id),
        "skipped": skipped,
        "dropped": [
            {"original": records[i].original, "source": records[i].source, "reason": reason}
            for i, reason in sorted(dropped.items())
        ],
        "exact_duplicates": exact_pairs,
        "decoded_before_interruption": decoded.reused,
        "near_duplicate_pairs": near_report,
        "conflicts": conflicts,
        "excluded_by_class": collected["excluded_by_class"],
        "multilabel": collected["multilabel"],
        "warnings": warnings,
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
                "conflicts": settings.conflicts,
                "max_pixels": settings.max_pixels,
                "multilabel": settings.multilabel,
                "dicom_voi": settings.dicom_voi,
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


#: A patient id holding more than this share of a dataset's images (of at least 20) is suspect: an
#: anonymiser that wrote one placeholder (``ANONYMOUS``) into every file makes one "patient".
DOMINANT_PATIENT_SHARE = 0.5


def _split_warnings(
    counts: dict[str, dict[str, int]],
    per_patient: Counter[str],
    n: int,
    settings: PrepareSettings,
    official: bool,
) -> list[str]:
    """What makes the splits unusable for a study, said in the report rather than found later."""
    warnings = []
    top = per_patient.most_common(1)
    if top and n >= 20 and top[0][1] > DOMINANT_PATIENT_SHARE * n:
        pid, k = top[0]
        warnings.append(
            f"one patient id ({pid}) holds {k} of {n} images, and a patient's images share a split: "
            "if the ids are placeholders (anonymised DICOMs), splits are meaningless; fix the ids or "
            "use a source with real ones"
        )
    for split, share in zip(SPLITS, settings.ratios, strict=True):
        if not counts.get(split):
            if official:
                why = "the source's official split has none (e.g. chexpert: --opt valid_split=test)"
            elif share == 0:
                continue
            else:
                why = "too few patients or images for --split"
            warnings.append(f"the {split} split is empty: {why}")
    return warnings


def _resolve_conflicts(
    groups: list[list[int]], records: list[Record], digests: list[str], policy: str
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Duplicate groups whose copies disagree on the label, for the report, and the rows ``policy`` drops.

    The same picture labelled covid in one folder and normal in another is a labelling error
    that would otherwise sit in training (or test) twice, once under each label.
    """
    found: list[dict[str, Any]] = []
    dropped: dict[int, str] = {}
    for group in groups:  # each sorted by record index, so group[0] is the first in source order
        labels = sort_labels({records[i].label for i in group})
        if len(labels) < 2:
            continue
        members = [
            {
                "id": digests[i][:16],
                "original": records[i].original,
                "source": records[i].source,
                "label": records[i].label,
            }
            for i in group
        ]
        first = records[group[0]]
        if policy == "keep-first":
            action = f"kept {first.original} ({first.label}), the first copy, and copies with its label"
            for i in group:
                if records[i].label != first.label:
                    dropped[i] = (
                        f"duplicate of {first.original} carries conflicting labels {labels}; "
                        f"--conflicts keep-first kept the first copy ({first.label})"
                    )
        else:
            action = "dropped every copy"
            # The listing is capped: a reason per member naming every member grows with its square.
            listing = ", ".join(f"{m['original']} ({m['label']})" for m in members[:5])
            more = f" and {len(members) - 5} more (see the report)" if len(members) > 5 else ""
            for i in group:
                dropped[i] = f"copies of one picture carry conflicting labels {labels}: {listing}{more}"
        found.append({"labels": labels, "action": action, "members": members})
    if found and policy == "error":
        example = ", ".join(f"{m['original']} ({m['label']})" for m in found[0]["members"])
        raise DataError(
            f"--conflicts error: {len(found)} group(s) of identical or near-identical images carry "
            f"conflicting labels, e.g. {example}; fix the labels, or pass --conflicts drop or keep-first"
        )
    return found, dropped


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
        f"- decoded by an interrupted earlier run and reused: {report.get('decoded_before_interruption', 0)}",
        f"- near-duplicate pairs kept in one split: {len(report['near_duplicate_pairs'])}",
        f"- duplicate groups with conflicting labels: {len(report.get('conflicts', []))}",
        f"- files skipped (unreadable or refused): {len(report['skipped'])}",
        f"- rows dropped: {len(report['dropped'])}",
        "",
        "| split | " + " | ".join(sorted({k for c in report["counts"].values() for k in c})) + " |",
    ]
    labels = sorted({k for c in report["counts"].values() for k in c})
    lines.append("|---" * (len(labels) + 1) + "|")
    for split, counts in report["counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(counts.get(lb, 0)) for lb in labels) + " |")
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- **{w}**" for w in report["warnings"]]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report["excluded_by_class"]:
        lines += ["", "## Excluded by --classes", ""]
        lines += [f"- {k}: {v}" for k, v in report["excluded_by_class"].items()]
    multi = report.get("multilabel") or {}
    if multi.get("skipped") or multi.get("resolved"):
        lines += ["", "## Images with several findings", ""]
        lines.append(
            f"- policy `--multilabel {multi['policy']}`: {multi['skipped']} skipped, "
            f"{multi['resolved']} given one label"
        )
    if report.get("conflicts"):
        lines += ["", "## Duplicates with conflicting labels", ""]
        for group in report["conflicts"]:
            copies = ", ".join(
                f"`{m['original']}` ({m['source']}, id {m['id']}): {m['label']}" for m in group["members"]
            )
            lines.append(f"- {copies}; {group['action']}")
    for title, key in (("Skipped (unreadable or refused)", "skipped"), ("Dropped", "dropped")):
        if report[key]:
            lines += ["", f"## {title}", ""]
            lines += [f"- `{s['original']}` ({s['source']}): {s['reason']}" for s in report[key]]
    return "\n".join(lines) + "\n"
