"""``cxraug data prepare``: decode every image once into a memory-mappable cache plus a manifest."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
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
from cxraug.data.dedup import SAME_PICTURE_CORRELATION, UnionFind, leakage_groups, near_duplicates
from cxraug.data.paths import DatasetRoot
from cxraug.data.prepared import FORMAT_VERSION, PreparedDataset, swap_in, write_manifest
from cxraug.data.splits import HELD_OUT_RANK, SPLITS, assign_splits
from cxraug.dicomio import DEFAULT_VOI, VOI_POLICIES
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.fileio import file_sha256, open_npy_memmap, work_folder_name, writing_into
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


def _decode_one(args: tuple[Any, int, str, int, str]) -> tuple[bool, Any, str, int]:
    source, size, mode, max_pixels, dicom_voi = args
    try:
        img, digest, phash = decode_source(source, size, mode, max_pixels, dicom_voi)
    except ImageReadError as exc:
        return False, str(exc), "", 0
    return True, img, digest, phash


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
    multilabel_resolved = 0
    notes: list[str] = []
    for source in sources:
        adapter = source.adapter
        n_before = len(records)
        root = DatasetRoot(source.root) if source.root is not None else None
        valid = set(VOCABULARY) | set(adapter.labels())
        declared = tuple(adapter.labels())
        for rec in adapter.records(source.root):
            findings = tuple(settings.label_map.get(f, f) for f in rec.findings)
            for finding in findings or (settings.label_map.get(rec.label, rec.label),):
                if finding not in valid:
                    raise DataError(
                        f"{adapter.name} produced unknown label {finding!r} for {rec.original} "
                        "(an adapter yields its declared labels(); --map targets must be valid labels)"
                    )
            if len(set(findings)) > 1:
                chosen = resolve_findings(findings, settings.multilabel, settings.classes, declared)
                if chosen is None:
                    multilabel_skipped[adapter.name] += 1
                    continue
                multilabel_resolved += 1
                label = chosen
            else:
                label = settings.label_map.get(rec.label, rec.label)
            if settings.classes and label not in settings.classes:
                excluded[label] += 1
                continue
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
        if len(records) == n_before:
            log.warning("%s yielded no images under %s", adapter.name, source.root)
    multilabel = {
        "policy": settings.multilabel,
        "skipped": sum(multilabel_skipped.values()),
        "skipped_by_source": dict(multilabel_skipped),
        "resolved": multilabel_resolved,
    }
    return records, {"excluded_by_class": dict(excluded), "notes": notes, "multilabel": multilabel}


def _decode_all(
    records: list[Record], settings: PrepareSettings, out: np.ndarray
) -> tuple[list[str], list[int], dict[int, str]]:
    """Decode into ``out`` (rows aligned with records); returns sha256s, phashes, failures.

    Refused records (``Record.refused``) are failures without their file being opened.
    """
    n = len(records)
    digests, phashes = [""] * n, [0] * n
    failures: dict[int, str] = {i: r.refused for i, r in enumerate(records) if r.refused}
    file_idx = [i for i, r in enumerate(records) if not isinstance(r.image, np.ndarray) and i not in failures]
    array_idx = [i for i, r in enumerate(records) if isinstance(r.image, np.ndarray) and i not in failures]
    workers = settings.workers or min(4, os.cpu_count() or 1)

    def store(i: int, result: tuple[bool, Any, str, int]) -> None:
        ok, payload, digest, phash = result
        if ok:
            out[i] = payload
            digests[i], phashes[i] = digest, phash
        else:
            failures[i] = payload

    def jobs(idx: list[int]) -> Iterator[tuple[Any, int, str, int, str]]:
        s = settings
        return ((records[i].image, s.size, s.resize, s.max_pixels, s.dicom_voi) for i in idx)

    with progress_bar() as progress:
        task = progress.add_task(f"decoding {n} images", total=n, completed=len(failures))
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


def _prepare_locked(workspace: Workspace, sources: list[Source], settings: PrepareSettings) -> PrepareResult:
    _check_name_free(workspace, settings)  # again under the lock: another writer may have finished
    final_dir = workspace.dataset_dir(settings.name)
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
        raise DataError(f"--strict: {len(skipped)} file(s) were skipped:\n{listing}")
    ok = [i for i in range(n) if i not in failures]
    if not ok:
        first = skipped[0]
        raise DataError(
            f"none of the {n} images could be used ({first['original']}: {first['reason']}"
            f"{f'; and {n - 1} more' if n > 1 else ''}); check --root and the files"
        )

    # Duplicate groups: identical files (one sha256), joined by near-duplicate pixels (found among
    # one copy per sha256: pHash candidates confirmed by thumbnail correlation).
    by_digest: dict[str, list[int]] = {}
    for i in ok:
        by_digest.setdefault(digests[i], []).append(i)
    reps = [copies[0] for copies in by_digest.values()]
    near = near_duplicates(
        np.array([phashes[i] for i in reps], dtype=np.uint64),
        lambda k: np.asarray(scratch[reps[k]]),  # noqa: F821 (del below)
    )
    joined, same_picture = UnionFind(len(reps)), UnionFind(len(reps))
    for a, b, corr in near:
        joined.union(a, b)
        if corr >= SAME_PICTURE_CORRELATION:
            same_picture.union(a, b)

    def expand(groups: dict[int, list[int]]) -> list[list[int]]:
        return [sorted(i for k in grp for i in by_digest[digests[reps[k]]]) for grp in groups.values()]

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
    for a, b, corr in near:
        ka, kb = first_kept.get(digests[reps[a]]), first_kept.get(digests[reps[b]])
        if ka is not None and kb is not None:
            near_report.append(
                {"a": records[ka].original, "b": records[kb].original, "correlation": round(corr, 4)}
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
        "near_duplicate_pairs": near_report,
        "conflicts": conflicts,
        "excluded_by_class": collected["excluded_by_class"],
        "multilabel": collected["multilabel"],
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
