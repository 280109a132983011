"""``cxraug experiment``: the whole study — base vs classic vs GAN augmentation — in one command."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxraug.cli.common import (
    AppContext,
    DryRunOpt,
    OptOpt,
    WorkspaceOpt,
    handle_errors,
    load_config_and_opts,
    print_json,
    split_list,
    workspace_from,
)
from cxraug.data.resolve import open_dataset
from cxraug.errors import OptionsError
from cxraug.experiment.report import write_experiment_report
from cxraug.experiment.runner import ARMS, STATE, Experiment, ExperimentConfig, timestamp
from cxraug.metrics.features import WEIGHTS_ENV
from cxraug.options import to_jsonable
from cxraug.ui import console

#: --quick: the README's first "see it work" command, minutes on a laptop CPU on the demo data.
QUICK = {
    "gan": "acgan",
    "classifier": "cnn",
    "seeds": 2,
    "epochs": 4,
    "batch_size": 32,
    "gan_kimg": 1.5,
    "gan_options": {"latent_dim": 64, "ngf": 32, "ndf": 32},
    "classifier_options": {"input_size": 64, "width": 16},
    "n_boot": 200,
}


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("experiment")
    @handle_errors
    def experiment(
        data: Annotated[
            str | None, typer.Option("--data", help="Dataset (default: latest, or the demo).")
        ] = None,
        gan: Annotated[
            str | None, typer.Option("--gan", help="GAN architecture to train, or an existing GAN run.")
        ] = None,
        classifier: Annotated[
            str | None, typer.Option("--classifier", help="Classifier architecture (default densenet121).")
        ] = None,
        synthetic: Annotated[
            int | None,
            typer.Option(
                "--synthetic", help="Synthetic images per GAN arm (default: as many as real training images)."
            ),
        ] = None,
        classic: Annotated[
            int | None,
            typer.Option("--classic", help="Classic images per classic arm (default: as many as real)."),
        ] = None,
        arms: Annotated[str, typer.Option("--arms", help=f"Comma list of {', '.join(ARMS)}.")] = ",".join(
            ARMS
        ),
        seeds: Annotated[
            int | None, typer.Option("--seeds", help="Classifier seeds per arm (default 5).")
        ] = None,
        epochs: Annotated[
            int | None, typer.Option("--epochs", help="Classifier epochs (default 10).")
        ] = None,
        gan_kimg: Annotated[
            float | None, typer.Option("--gan-kimg", help="GAN training length (default: the GAN's).")
        ] = None,
        pretrained: Annotated[
            bool, typer.Option("--pretrained/--no-pretrained", help="ImageNet weights for the classifier.")
        ] = True,
        quick: Annotated[
            bool, typer.Option("--quick", help="Tiny budgets: minutes on a laptop CPU (demo data).")
        ] = False,
        seed: Annotated[int, typer.Option("--seed", help="Base seed.")] = 0,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
        inception_weights: Annotated[
            Path | None,
            typer.Option(
                "--inception-weights", envvar=WEIGHTS_ENV, help="Local Inception weights for FID/KID."
            ),
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="Experiment folder; an existing one resumes.")
        ] = None,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue the latest unfinished experiment.")
        ] = False,
        opt: OptOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Train (or reuse) a GAN, build each arm's training set, train a classifier per arm and seed,
        evaluate all on the same real test split, and report means, CIs and tests against base."""
        _, opts = load_config_and_opts(None, opt)
        stray = [k for k in opts if k not in ("gan", "classifier")]
        if stray:
            raise OptionsError(f"--opt {stray[0]}...: prefix with gan. or classifier., e.g. --opt gan.ngf=32")
        ws = workspace_from(workspace)
        registry = ctx.registry
        arm_list = split_list(arms)
        bad = [a for a in arm_list if a not in ARMS]
        if bad or not arm_list:
            raise OptionsError(f"--arms {arms!r}: choose from {', '.join(ARMS)}")
        out_dir = out
        if resume:
            if out_dir is None:
                found = sorted(
                    (
                        p.parent
                        for p in ws.reports_dir.glob(f"experiment-*/{STATE}")
                        if json.loads(p.read_text()).get("status") != "finished"
                    ),
                    key=lambda p: p.name,
                )
                if not found:
                    raise OptionsError(f"--resume: no unfinished experiment under {ws.reports_dir}")
                out_dir = found[-1]
            if not (out_dir / STATE).is_file():
                raise OptionsError(f"--resume: {out_dir} holds no {STATE}")
            try:
                config = ExperimentConfig(**json.loads((out_dir / STATE).read_text())["config"])
            except (TypeError, KeyError, json.JSONDecodeError) as exc:
                raise OptionsError(
                    f"{out_dir / STATE}: not an experiment of this cxraug version ({exc})"
                ) from None
        else:
            q = QUICK if quick else {}
            dataset = open_dataset(ws, registry, data)
            gan_name = gan or q.get("gan", "stylegan2")
            cls_name = classifier or q.get("classifier", "densenet121")
            clf_cls = registry.get("classifier", cls_name)
            n_train = len(dataset.indices("train"))
            config = ExperimentConfig(
                data=dataset.name,
                gan=gan_name,
                classifier=cls_name,
                arms=arm_list,
                seeds=seeds or q.get("seeds", 5),
                synthetic=n_train if synthetic is None else synthetic,
                classic=n_train if classic is None else classic,
                epochs=epochs or q.get("epochs", 10),
                batch_size=q.get("batch_size", 32),
                gan_kimg=gan_kimg or q.get("gan_kimg"),
                gan_options={**q.get("gan_options", {}), **opts.get("gan", {})}
                if gan_name == q.get("gan")
                else dict(opts.get("gan", {})),
                classifier_options={**q.get("classifier_options", {}), **opts.get("classifier", {})}
                if cls_name == q.get("classifier")
                else dict(opts.get("classifier", {})),
                pretrained=pretrained and clf_cls.pretrained_by_default,
                n_boot=q.get("n_boot", 1000),
                seed=seed,
                device=device,
                inception_weights=str(inception_weights) if inception_weights else None,
                quick=quick,
            )
            if not (Path(config.gan).is_dir() or (ws.runs_dir / "gan" / config.gan).is_dir()):
                registry.get("gan", config.gan)
            out_dir = out_dir or ws.reports_dir / f"experiment-{timestamp()}"
        if dry_run:
            print_json(to_jsonable({"out": str(out_dir), "config": asdict(config)}))
            return
        exp = Experiment(ws, registry, out_dir, config)
        results = exp.run()
        md, html_path = write_experiment_report(exp.state, out_dir)
        table = Table(title=f"experiment {out_dir.name}: macro ROC-AUC on the real test split")
        for col in ("arm", "mean", "95% CI (seeds)", "vs base", "p"):
            table.add_column(col)
        for arm, s in results["arms"].items():
            d = results["vs_base"].get(arm, {}).get("macro_auc_diff")
            table.add_row(
                arm,
                f"{s['auc_macro']['mean']:.4f}",
                f"[{s['auc_macro']['ci_low']:.4f}, {s['auc_macro']['ci_high']:.4f}]",
                f"{d['diff']:+.4f}" if d else "",
                f"{d['p']:.3f}" if d else "",
            )
        console.print(table)
        console.print(f"report: {html_path} ({md}); results: {out_dir / STATE}", soft_wrap=True)
