"""``cxraug evaluate``: inputs for the metric plugins, the metrics themselves, metrics.json."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cxraug import __version__
from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError, OptionsError
from cxraug.fileio import file_sha256
from cxraug.imageio import ImageReadError, fit_square, read_gray
from cxraug.interfaces import MetricInputs, PluginOptions
from cxraug.metrics.features import FEATURES, FeatureCache, FeatureService
from cxraug.options import to_jsonable
from cxraug.registry import Registry
from cxraug.training.classifier_run import load_classifier
from cxraug.training.gan_run import GanRun
from cxraug.training.generate import generate_images, read_generated_manifest
from cxraug.ui import console
from cxraug.workspace import Workspace

log = logging.getLogger(__name__)

GENERATIVE_INPUTS = frozenset({"generated"})
CLASSIFIER_INPUTS = frozenset({"y_true", "y_score"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class EvalRequest:
    """Everything `cxraug evaluate` was asked (recorded in metrics.json)."""

    metrics: dict[str, PluginOptions]
    dataset: PreparedDataset
    out_dir: Path
    split: str = "test"
    gen_split: str = "train"
    gan_run: Path | None = None
    generated_dir: Path | None = None
    classifier_run: Path | None = None
    n: int | None = None
    seed: int = 0
    truncation: float = 1.0
    device: str = "cpu"
    inception_weights: Path | None = None
    #: Feature networks of FID/KID/PRDC (``--features``); None: each metric's own option.
    features: list[str] | None = None
    xrv_weights: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def metric_entries(
    metrics: dict[str, PluginOptions], features: list[str] | None
) -> list[tuple[str, str, PluginOptions]]:
    """(entry, metric, options) per computation: a metric with a ``features`` option once per feature
    network of ``features``; entries other than Inception's are labelled ``METRIC@NETWORK``."""
    out = []
    for name, opts in metrics.items():
        if "features" not in type(opts).model_fields:
            out.append((name, name, opts))
            continue
        for net in features or [getattr(opts, "features", "inception")]:
            copy = opts.model_copy(update={"features": net})
            out.append((name if net == "inception" else f"{name}@{net}", name, copy))
    return out


def image_files(folder: Path) -> list[Path]:
    """The image files of a ``--generated`` folder; an error naming it when it holds none."""
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise DataError(f"--generated {folder}: {what}")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not files:
        raise DataError(
            f"--generated {folder}: no images found (expected PNG/JPEG files, optionally in class folders)"
        )
    return files


def read_image_folder(folder: Path, size: int) -> tuple[np.ndarray, list[str | None]]:
    """Images under ``folder`` (class sub-folders give labels) as (N, size, size) uint8."""
    files = image_files(folder)
    images, labels = [], []
    for path in files:
        try:
            gray = read_gray(path)
        except ImageReadError as exc:
            raise DataError(f"{path}: {exc}") from None
        images.append(gray if gray.shape == (size, size) else fit_square(gray, size))
        rel = path.relative_to(folder)
        labels.append(rel.parts[0] if len(rel.parts) > 1 else None)
    return np.stack(images), labels


def _gan_counts(dataset: PreparedDataset, split: str, labels: list[str], n: int | None) -> dict[str, int]:
    """Generated images per label: as many as the real split has (or ``n`` spread the same way)."""
    real = {lb: len(dataset.indices(split, [lb])) for lb in labels}
    total_real = sum(real.values())
    if total_real == 0:
        raise DataError(f"dataset {dataset.name!r} has no {split} images of {labels}")
    if n is None:
        return real
    counts = {lb: int(n * c / total_real) for lb, c in real.items()}
    for lb in sorted(real, key=lambda x: -real[x])[: n - sum(counts.values())]:
        counts[lb] += 1
    return counts


def generated_from_run(req: EvalRequest, registry: Registry) -> tuple[np.ndarray, list[str | None]]:
    """Generate (or reuse) images from the GAN run into out_dir/generated and read them back."""
    assert req.gan_run is not None
    gens = GanRun(req.gan_run).load_generators(registry, torch.device(req.device))
    labels = [lb for lb in req.dataset.classes if lb in gens]
    if not labels:
        if list(gens) == ["all"]:
            labels = ["all"]
        else:
            raise DataError(
                f"GAN run {req.gan_run} generates {', '.join(gens)}, none of which are classes of "
                f"dataset {req.dataset.name!r} ({', '.join(req.dataset.classes)})"
            )
    if labels == ["all"]:
        counts = {"all": req.n or len(req.dataset.indices(req.gen_split))}
    else:
        counts = _gan_counts(req.dataset, req.gen_split, labels, req.n)
    folder = req.out_dir / "generated"
    console.print(f"generating {sum(counts.values())} images from {req.gan_run.name} ...")
    generate_images(gens, counts, folder, seed=req.seed, truncation=req.truncation)
    rows = [r for r in read_generated_manifest(folder) if int(r["index"]) < counts.get(r["label"], 0)]
    images = np.stack([np.asarray(Image.open(folder / r["file"]).convert("L")) for r in rows])
    if images.shape[1] != req.dataset.size:
        images = np.stack([fit_square(im, req.dataset.size) for im in images])
    return images, [r["label"] if r["label"] != "all" else None for r in rows]


def run_evaluation(
    req: EvalRequest,
    registry: Registry,
    workspace: Workspace,
    *,
    extractor_factory: Callable[[str], Any] | None = None,
    xrv_factory: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Run every requested metric plugin; returns what metrics.json holds (also written there)."""
    req.out_dir.mkdir(parents=True, exist_ok=True)
    ds = req.dataset
    classes = {name: registry.metric(name) for name in req.metrics}
    needs = set().union(*(cls.requires for cls in classes.values())) if classes else set()
    inputs = MetricInputs(labels=list(ds.classes), out_dir=req.out_dir)
    sources: dict[str, Any] = {"dataset": ds.name, "split": req.split}
    if needs & {"generated", "real", "train"}:
        if req.generated_dir is None and req.gan_run is None:
            raise OptionsError(
                f"{', '.join(n for n, c in classes.items() if 'generated' in c.requires)} need generated "
                "images: train a GAN first (`cxraug train-gan ARCH`), or pass --gan RUN or --generated DIR"
            )
        if req.generated_dir is not None:
            gen, gen_labels = read_image_folder(req.generated_dir, ds.size)
            sources["generated"] = str(req.generated_dir)
        else:
            gen, gen_labels = generated_from_run(req, registry)
            sources["gan_run"] = str(req.gan_run)
            sources["generated"] = str(req.out_dir / "generated")
        label_set = {lb for lb in gen_labels if lb is not None}
        real_idx = ds.indices(
            req.gen_split, sorted(label_set) if label_set and label_set <= set(ds.classes) else None
        )
        inputs.generated = gen
        known = [lb for lb in gen_labels if lb is not None and lb in ds.classes]
        inputs.generated_labels = known if len(known) == len(gen_labels) else None
        inputs.real = np.asarray(ds.images[real_idx])
        inputs.real_labels = [ds.rows[i]["label"] for i in real_idx]
        inputs.train = np.asarray(ds.images[ds.indices("train")])
        sources["real_split"] = req.gen_split
        holdout = ds.indices(req.split if req.split != "train" else "test")
        inputs.services.holdout = np.asarray(ds.images[holdout])
        grids(inputs, ds, req.out_dir)
    if needs & CLASSIFIER_INPUTS:
        if req.classifier_run is None:
            raise OptionsError(
                "--roc needs a classifier run: train one first (`cxraug train-classifier ARCH`) "
                "or pass --classifier RUN"
            )
        loaded = load_classifier(req.classifier_run, registry, req.device)
        unknown = sorted({ds.rows[i]["label"] for i in ds.indices(req.split)} - set(loaded.labels))
        idx = ds.indices(req.split, loaded.labels)
        if len(idx) == 0:
            raise DataError(
                f"dataset {ds.name!r} has no {req.split} images of the classifier's labels {loaded.labels}"
            )
        if unknown:
            console.print(
                f"[yellow]note: {req.split} images labelled {', '.join(unknown)} are skipped: "
                f"the classifier does not know those labels[/]"
            )
        lookup = {lb: i for i, lb in enumerate(loaded.labels)}
        inputs.y_true = np.array([lookup[ds.rows[i]["label"]] for i in idx])
        inputs.y_score = loaded.predict_proba(np.asarray(ds.images[idx]))
        inputs.labels = list(loaded.labels)
        sources["classifier_run"] = str(req.classifier_run)
        sources["classifier"] = loaded.arch
        np.savez_compressed(
            req.out_dir / "predictions.npz",
            y_true=inputs.y_true,
            y_score=inputs.y_score,
            labels=np.array(loaded.labels),
            ids=np.array([ds.rows[i]["id"] for i in idx]),
        )
    inputs.services.device = req.device
    inputs.services.inception_weights = req.inception_weights
    inputs.services.xrv_weights = req.xrv_weights
    inputs.services.feature_cache = workspace.root / "cache" / "features"
    inputs.services.features = FeatureService(
        weights=req.inception_weights,
        xrv_weights=req.xrv_weights,
        device=req.device,
        cache=FeatureCache(inputs.services.feature_cache),
        extractor_factory=extractor_factory,
        xrv_factory=xrv_factory,
    )
    results: dict[str, Any] = {"values": {}, "tables": {}, "artifacts": {}}
    entries = metric_entries(req.metrics, req.features)
    networks: dict[str, str] = {}
    for name, metric, opts in entries:
        cls = classes[metric]
        missing = [f for f in cls.requires if getattr(inputs, f) is None]
        if missing:
            raise OptionsError(f"metric {name} needs {', '.join(missing)}, which this evaluation has not got")
        net = getattr(opts, "features", None) or getattr(opts, "space", None)
        if net in FEATURES:
            networks[name] = net
        result = cls(opts).compute(inputs)
        results["values"][name] = {k: float(v) for k, v in result.values.items()}
        results["tables"].update({f"{name}.{k}": v for k, v in result.tables.items()})
        results["artifacts"].update(
            {
                f"{name}.{k}": str(Path(p).relative_to(req.out_dir))
                if Path(p).is_relative_to(req.out_dir)
                else str(p)
                for k, p in result.artifacts.items()
            }
        )
    if (req.out_dir / "samples_real_vs_generated.png").is_file():
        results["artifacts"]["samples"] = "samples_real_vs_generated.png"
    if req.gan_run is not None:
        results["artifacts"].update(copy_loss_curves(req.gan_run, req.out_dir))
    service = inputs.services.features
    doc = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cxraug_version": __version__,
        "sources": sources,
        "options": {name: to_jsonable(opts) for name, _, opts in entries},
        "request": {
            "n": req.n,
            "seed": req.seed,
            "truncation": req.truncation,
            "device": req.device,
            "inception_weights": str(req.inception_weights) if req.inception_weights else None,
            "inception_weights_sha256": file_sha256(req.inception_weights) if req.inception_weights else None,
            "features": req.features,
            "xrv_weights": str(req.xrv_weights) if req.xrv_weights else None,
            "xrv_weights_sha256": file_sha256(req.xrv_weights) if req.xrv_weights else None,
        },
        # which feature network each value was computed on, and what exactly that network was
        "feature_networks": networks,
        "feature_extractors": service.identities if isinstance(service, FeatureService) else {},
        "warnings": service.warnings if isinstance(service, FeatureService) else [],
        **results,
    }
    (req.out_dir / "metrics.json").write_text(json.dumps(to_jsonable(doc), indent=2, default=str) + "\n")
    return doc


def grids(inputs: MetricInputs, ds: PreparedDataset, out_dir: Path, per_label: int = 8) -> None:
    """One PNG: for each label, a row of real images then a row of generated ones."""
    assert inputs.real is not None and inputs.generated is not None
    s = ds.size
    labels: list[str | None] = [*sorted({lb for lb in (inputs.generated_labels or []) if lb})] or [None]
    rows = []
    for lb in labels:
        for images, image_labels in (
            (inputs.real, inputs.real_labels),
            (inputs.generated, inputs.generated_labels),
        ):
            pick = [i for i, x in enumerate(image_labels or [None] * len(images)) if lb is None or x == lb][
                :per_label
            ]
            row = np.zeros((s, s * per_label), np.uint8)
            for k, i in enumerate(pick):
                row[:, k * s : (k + 1) * s] = images[i]
            rows.append(row)
    Image.fromarray(np.concatenate(rows), "L").save(out_dir / "samples_real_vs_generated.png")


def copy_loss_curves(gan_run: Path, out_dir: Path) -> dict[str, str]:
    """The GAN run's loss plots, copied next to the report."""
    run = GanRun(gan_run)
    out = {}
    for unit in run.record.units:
        src = run.unit_folder(unit) / "losses.png"
        if src.is_file():
            dst = out_dir / f"gan_losses_{unit}.png"
            shutil.copyfile(src, dst)
            out[f"gan_losses.{unit}"] = dst.name
    return out
