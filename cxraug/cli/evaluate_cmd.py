"""``cxraug evaluate``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxraug.cli.common import (
    AppContext,
    ConfigOpt,
    OptOpt,
    WorkspaceOpt,
    handle_errors,
    load_config_and_opts,
    print_json,
    workspace_from,
)
from cxraug.data.resolve import open_dataset
from cxraug.errors import OptionsError
from cxraug.evaluation.engine import EvalRequest, run_evaluation
from cxraug.evaluation.report import write_reports
from cxraug.metrics.features import WEIGHTS_ENV
from cxraug.options import resolve_options
from cxraug.training.gan_trainer import pick_device
from cxraug.training.runs import list_runs, read_options, resolve_run
from cxraug.ui import console

#: Flags for the built-in metrics; installed metric plugins are selected with --metric NAME.
METRIC_FLAGS = ("fid", "kid", "prdc", "memorization", "roc")


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("evaluate")
    @handle_errors
    def evaluate(
        fid: Annotated[bool, typer.Option("--fid", help="Frechet Inception Distance (clean-fid).")] = False,
        kid: Annotated[
            bool, typer.Option("--kid", help="Kernel Inception Distance (better for small sets).")
        ] = False,
        prdc: Annotated[
            bool, typer.Option("--prdc", help="Precision / recall / density / coverage.")
        ] = False,
        memorization: Annotated[
            bool,
            typer.Option("--memorization", help="Generated images that look copied from training images."),
        ] = False,
        roc: Annotated[
            bool,
            typer.Option("--roc", help="Classifier ROC-AUC with CIs, sensitivity, specificity, confusion."),
        ] = False,
        metric: Annotated[
            list[str] | None,
            typer.Option("--metric", help="Any installed metric plugin by name (repeatable)."),
        ] = None,
        gan: Annotated[str | None, typer.Option("--gan", help="GAN run (default: latest).")] = None,
        generated: Annotated[
            Path | None, typer.Option("--generated", help="Folder of generated images instead of a GAN run.")
        ] = None,
        classifier: Annotated[
            str | None, typer.Option("--classifier", help="Classifier run (default: latest).")
        ] = None,
        data: Annotated[
            str | None, typer.Option("--data", help="Dataset (default: the run's, else the latest).")
        ] = None,
        split: Annotated[
            str, typer.Option("--split", help="Real split for the classifier and as held-out reference.")
        ] = "test",
        real_split: Annotated[
            str, typer.Option("--real-split", help="Real split generated images are compared with.")
        ] = "train",
        n: Annotated[
            int | None, typer.Option("--n", help="Generated images (default: as many as the real split).")
        ] = None,
        truncation: Annotated[
            float, typer.Option("--truncation", help="Truncation psi when generating.")
        ] = 1.0,
        mode: Annotated[
            str | None,
            typer.Option("--mode", help="clean-fid mode: clean, legacy_pytorch or legacy_tensorflow."),
        ] = None,
        inception_weights: Annotated[
            Path | None,
            typer.Option(
                "--inception-weights", envvar=WEIGHTS_ENV, help="Local Inception weights file (offline use)."
            ),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of generated latents and bootstraps.")] = 0,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
        out: Annotated[
            Path | None, typer.Option("--out", help="Report folder (default: WORKSPACE/reports/eval-TIME).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="metrics.json on stdout.")] = False,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Metrics of generated images and of a classifier, as a table, metrics.json and a report."""
        cfg_file, opts = load_config_and_opts(config, opt)
        ws = workspace_from(workspace)
        registry = ctx.registry
        chosen = [
            name for name, on in zip(METRIC_FLAGS, (fid, kid, prdc, memorization, roc), strict=True) if on
        ]
        chosen += [m for m in metric or [] if m not in chosen]
        if gan is not None and generated is not None:
            raise OptionsError("give --gan or --generated, not both")
        if split not in ("train", "val", "test") or real_split not in ("train", "val", "test"):
            raise OptionsError("--split/--real-split: choose train, val or test")
        gan_runs, clf_runs = list_runs(ws, "gan"), list_runs(ws, "classifier")
        if not chosen:  # everything the workspace can answer
            if generated is not None or gan is not None or gan_runs:
                chosen += ["fid", "kid", "prdc", "memorization"]
            if classifier is not None or clf_runs:
                chosen.append("roc")
            if not chosen:
                raise OptionsError(
                    "nothing to evaluate yet: train a GAN (`cxraug train-gan ARCH`) and/or a "
                    "classifier (`cxraug train-classifier ARCH`), or pass --generated DIR"
                )
        stray = [k for k in opts if k not in chosen]
        if stray:
            raise OptionsError(
                f"--opt {stray[0]}...: prefix options with a chosen metric, e.g. --opt fid.batch_size=32"
            )
        metrics = {}
        for name in chosen:
            cls = registry.get("metric", name)
            table = dict(cfg_file.get("metric", {}).get(name, {}))
            if mode is not None and "mode" in cls.Options.model_fields:
                table["mode"] = mode
            if "seed" in cls.Options.model_fields:
                table.setdefault("seed", seed)
            metrics[name] = resolve_options(
                cls.Options, plugin=f"metric {name}", config=table, opts=opts.get(name, {})
            )
        generative = any("generated" in registry.get("metric", m).requires for m in chosen)
        needs_clf = any({"y_true", "y_score"} & registry.get("metric", m).requires for m in chosen)
        gan_run = resolve_run(ws, "gan", gan) if generative and generated is None else None
        clf_run = None
        if needs_clf:
            if classifier is None and not clf_runs:
                raise OptionsError(
                    "--roc needs a classifier run: train one first (`cxraug train-classifier ARCH`)"
                    " or pass --classifier RUN"
                )
            clf_run = resolve_run(ws, "classifier", classifier)
        data_name = data
        for run in (gan_run, clf_run):  # the GAN's data are the real images it was trained on
            if data_name is None and run is not None:
                data_name = read_options(run)["config"]["data"]
        dataset = open_dataset(ws, registry, data_name)
        source = dataset.info.get("augmented_from")
        if source and data is None and (ws.dataset_dir(source["name"]) / "info.json").is_file():
            # an augmented dataset's val/test are its source's; its train split holds synthetic
            # images, which must not be the real reference of FID or memorisation
            console.print(
                f"evaluating against {source['name']!r}, the real dataset {dataset.name!r} was "
                "augmented from (same test split, real training images only)",
                soft_wrap=True,
            )
            dataset = open_dataset(ws, registry, source["name"])
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = out or ws.reports_dir / f"eval-{stamp}"
        req = EvalRequest(
            metrics=metrics,
            dataset=dataset,
            out_dir=out_dir,
            split=split,
            gen_split=real_split,
            gan_run=gan_run,
            generated_dir=generated,
            classifier_run=clf_run,
            n=n,
            seed=seed,
            truncation=truncation,
            device=str(pick_device(device)),
            inception_weights=inception_weights,
        )
        doc = run_evaluation(req, registry, ws)
        md, html_path = write_reports(doc, out_dir)
        if as_json:
            print_json(doc)
            return
        table = Table(title=f"cxraug evaluate ({dataset.name})")
        for col in ("metric", "name", "value"):
            table.add_column(col)
        for name, values in doc["values"].items():
            for key, value in values.items():
                table.add_row(name, key, f"{value:.4f}")
        console.print(table)
        console.print(f"report: {html_path}  ({md})  metrics: {out_dir / 'metrics.json'}", soft_wrap=True)
