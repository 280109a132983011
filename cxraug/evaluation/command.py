"""``cxraug evaluate`` as a run: settings, defaults from the workspace, a report folder."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from cxraug.data.prepared import PreparedDataset
from cxraug.data.resolve import open_dataset
from cxraug.errors import OptionsError
from cxraug.evaluation.engine import EvalRequest, image_files, run_evaluation
from cxraug.evaluation.report import write_reports
from cxraug.interfaces import DistContext
from cxraug.options import resolve_options
from cxraug.settings import MAX_IMAGES, FeatureList, Settings
from cxraug.training.checkpoint import not_a_torch_file
from cxraug.training.classifier_run import ClassifierRun
from cxraug.training.gan_run import MAX_SEED, GanRun
from cxraug.training.lifecycle import Job
from cxraug.training.runs import DataRef, ReportRun, RunRecord, base_record
from cxraug.ui import console

log = logging.getLogger(__name__)

#: Flags for the built-in metrics; installed metric plugins are selected with --metric NAME.
METRIC_FLAGS = ("fid", "kid", "prdc", "memorization", "roc")
Split = Literal["train", "val", "test"]


class EvaluateSettings(Settings):
    """``cxraug evaluate``: which metrics, on what, and where the report goes."""

    section: ClassVar[str] = "evaluate"

    fid: bool = False
    kid: bool = False
    prdc: bool = False
    memorization: bool = False
    roc: bool = False
    metric: list[str] = []
    gan: str | None = None
    generated: str | None = None
    classifier: str | None = None
    data: str | None = None
    split: Split = "test"
    real_split: Split = "train"
    n: int | None = Field(None, ge=1, le=MAX_IMAGES)
    truncation: float = Field(1.0, gt=0, le=2, allow_inf_nan=False)
    mode: Literal["clean", "legacy_pytorch", "legacy_tensorflow"] | None = None
    inception_weights: str | None = None
    #: None: each metric's ``features`` option (inception unless --opt fid.features=xrv).
    features: FeatureList | None = Field(None, min_length=1)
    xrv_weights: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    out: str | None = None
    #: Options per metric plugin (``[metric.NAME]`` tables and ``--opt NAME.KEY=VALUE``).
    metric_options: dict[str, dict[str, Any]] = {}


def check_inception_weights(value: str | None) -> None:
    """``--inception-weights`` (or its environment variable) names a file torch can read, or nothing;
    checked before any image is generated."""
    if value is None:
        return
    path = Path(value)
    if not path.is_file():
        raise OptionsError(f"--inception-weights {value}: no such file")
    problem = not_a_torch_file(path)
    if problem is not None:
        raise OptionsError(
            f"--inception-weights {value}: {problem}; give clean-fid's Inception weights (TorchScript) "
            "or pytorch-fid's state dict"
        )


def check_xrv(
    features: Sequence[str] | None, options: dict[str, dict[str, Any]], weights: str | None
) -> None:
    """When anything asks for xrv features: torchxrayvision is installed and ``--xrv-weights`` (or its
    environment variable) names a file; checked before any image is generated."""
    from cxraug.metrics.features import (
        XRV_ENV,
        check_xrv_download,
        import_xrv,
        load_xrv_weights,
        resolve_xrv_weights,
    )

    wanted = "xrv" in (features or []) or any(
        opts.get("features") == "xrv" or opts.get("space") == "xrv" for opts in options.values()
    )
    if not wanted:
        if weights and weights != os.environ.get(XRV_ENV):
            # named on the command line; a file set in the environment for good is not worth a warning
            log.warning(
                "--xrv-weights %s is not used: no metric asks for xrv features (--features xrv)", weights
            )
        return
    xrv = import_xrv()
    path = resolve_xrv_weights(weights)
    if path is None:
        check_xrv_download()
    elif (problem := not_a_torch_file(path)) is not None:
        raise OptionsError(
            f"--xrv-weights {path}: {problem}; give TorchXRayVision's densenet121-res224-all file or a "
            "state dict of xrv.models.DenseNet"
        )
    else:  # tensors missing or of the wrong shape: said now, not after generating --n images
        load_xrv_weights(xrv.models.DenseNet(weights=None), path)


class EvaluationRecord(RunRecord[EvaluateSettings]):
    """``options.json`` of a report folder."""


class EvaluationRun(ReportRun[EvaluationRecord]):
    """A ``reports/eval-TIME`` folder: options.json, metrics.json, report.md, report.html."""

    kind: ClassVar[str] = "evaluation"
    Record: ClassVar[type[RunRecord[Any]]] = EvaluationRecord
    make_hint: ClassVar[str] = "cxraug evaluate"
    product: ClassVar[str] = "metrics.json"

    @property
    def settings(self) -> EvaluateSettings:
        return self.record.config

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))


class EvaluateJob(Job[EvaluateSettings, EvaluationRun]):
    """An evaluation through the same lifecycle as training runs (status, failure clean-up)."""

    run_type: ClassVar[type[EvaluationRun]] = EvaluationRun

    def resolve(self, settings: EvaluateSettings) -> EvaluateSettings:
        s, ws, registry = settings, self.ws, self.registry
        chosen = [name for name in METRIC_FLAGS if getattr(s, name)]
        chosen += [m for m in s.metric if m not in chosen]
        if s.gan is not None and s.generated is not None:
            raise OptionsError("give --gan or --generated, not both")
        check_inception_weights(s.inception_weights)
        if s.generated is not None:
            image_files(Path(s.generated))  # refused before a report folder is made
        gan_runs, clf_runs = GanRun.all(ws), ClassifierRun.all(ws)
        if not chosen:  # everything the workspace can answer
            if s.generated is not None or s.gan is not None or gan_runs:
                chosen += ["fid", "kid", "prdc", "memorization"]
            if s.classifier is not None or clf_runs:
                chosen.append("roc")
            if not chosen:
                raise OptionsError(
                    "nothing to evaluate yet: train a GAN (`cxraug train-gan ARCH`) and/or a "
                    "classifier (`cxraug train-classifier ARCH`), or pass --generated DIR"
                )
        stray = [k for k in s.metric_options if k not in chosen]
        if stray:
            raise OptionsError(
                f"--opt {stray[0]}...: prefix options with a chosen metric, e.g. --opt fid.batch_size=32"
            )
        options: dict[str, dict[str, Any]] = {}
        for name in chosen:
            cls = registry.metric(name)
            table = dict(s.metric_options.get(name, {}))
            if s.mode is not None and "mode" in cls.Options.model_fields:
                table["mode"] = s.mode
            if "seed" in cls.Options.model_fields:
                table.setdefault("seed", s.seed)
            options[name] = resolve_options(cls.Options, plugin=f"metric {name}", config=table).model_dump(
                mode="json"
            )
        generative = any("generated" in registry.metric(m).requires for m in chosen)
        needs_clf = any({"y_true", "y_score"} & registry.metric(m).requires for m in chosen)
        gan = str(GanRun.resolve(ws, s.gan).path) if generative and s.generated is None else None
        clf = None
        if needs_clf:
            if s.classifier is None and not clf_runs:
                raise OptionsError(
                    "--roc needs a classifier run: train one first (`cxraug train-classifier ARCH`) "
                    "or pass --classifier RUN"
                )
            clf = str(ClassifierRun.resolve(ws, s.classifier).path)
        check_xrv(s.features, options, s.xrv_weights)
        update = {"metric": chosen, "metric_options": options, "gan": gan, "classifier": clf}
        update["data"] = self.dataset_for(s.data, gan, clf).name
        return EvaluateSettings.model_validate({**s.model_dump(), **update})

    def dataset_for(self, data: str | None, gan: str | None, clf: str | None) -> PreparedDataset:
        """The named dataset, else the runs' dataset; an augmented one is replaced by its real source."""
        name = data
        if name is None and gan is not None:
            name = GanRun(gan).settings.data
        if name is None and clf is not None:
            name = ClassifierRun(clf).settings.data
        dataset = open_dataset(self.ws, self.registry, name)
        source = dataset.info.get("augmented_from")
        if source and data is None and (self.ws.dataset_dir(source["name"]) / "info.json").is_file():
            # an augmented dataset's val/test are its source's; its train split holds synthetic
            # images, which must not be the real reference of FID or memorisation
            console.print(
                f"evaluating against {source['name']!r}, the real dataset {dataset.name!r} was "
                "augmented from (same test split, real training images only)",
                soft_wrap=True,
            )
            dataset = open_dataset(self.ws, self.registry, source["name"])
        return dataset

    def data(self, settings: EvaluateSettings) -> DataRef | None:
        return None  # nothing to resume: an evaluation is rerun, not continued

    def record(self, settings: EvaluateSettings) -> tuple[str, EvaluationRecord]:
        return "eval", EvaluationRecord(**base_record("evaluation", "", settings, None))

    def create(self, settings: EvaluateSettings) -> EvaluationRun:
        _, record = self.record(settings)
        if settings.out:
            return EvaluationRun.create_at(Path(settings.out), record)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return EvaluationRun.create_in(self.ws.reports_dir, f"eval-{stamp}", record)

    def train(
        self, run: EvaluationRun, settings: EvaluateSettings, dist: DistContext, device: torch.device
    ) -> dict[str, Any]:
        s, registry = settings, self.registry
        req = EvalRequest(
            metrics={m: registry.metric(m).Options(**s.metric_options[m]) for m in s.metric},
            dataset=open_dataset(self.ws, registry, s.data),
            out_dir=run.path,
            split=s.split,
            gen_split=s.real_split,
            gan_run=Path(s.gan) if s.gan else None,
            generated_dir=Path(s.generated) if s.generated else None,
            classifier_run=Path(s.classifier) if s.classifier else None,
            n=s.n,
            seed=s.seed,
            truncation=s.truncation,
            device=str(device),
            inception_weights=Path(s.inception_weights) if s.inception_weights else None,
            features=list(s.features) if s.features else None,
            xrv_weights=Path(s.xrv_weights) if s.xrv_weights else None,
        )
        doc = run_evaluation(req, registry, self.ws)
        write_reports(doc, run.path)
        return {}
