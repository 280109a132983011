"""``cxraug train-classifier``."""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cxraug.cli.common import (
    AppContext,
    ConfigOpt,
    DryRunOpt,
    OptOpt,
    WorkspaceOpt,
    apply_command_config,
    handle_errors,
    load_config_and_opts,
    print_json,
    split_list,
    workspace_from,
)
from cxraug.data.resolve import open_dataset
from cxraug.errors import CxrError, OptionsError
from cxraug.options import options_table, resolve_options, to_jsonable
from cxraug.training import distributed
from cxraug.training.classifier_trainer import ClassifierTrainConfig, ClassifierTrainer
from cxraug.training.gan_trainer import pick_device
from cxraug.training.runs import finish_run, list_runs, read_options, resolve_run, start_run
from cxraug.ui import console


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("train-classifier", epilog=_epilog(ctx))
    @handle_errors
    def train_classifier(
        typer_ctx: typer.Context,
        arch: Annotated[
            str | None, typer.Argument(help="Classifier (see `cxraug plugins list --kind classifier`).")
        ] = None,
        data: Annotated[
            str | None, typer.Option("--data", help="Prepared dataset (default: latest, or the demo).")
        ] = None,
        classes: Annotated[
            list[str] | None, typer.Option("--classes", help="Labels to classify (default: all).")
        ] = None,
        epochs: Annotated[
            int, typer.Option("--epochs", help="Epochs; the best one on validation AUC is kept.")
        ] = 10,
        batch_size: Annotated[
            int, typer.Option("--batch-size", help="Images per step (all processes together).")
        ] = 32,
        lr: Annotated[
            float | None, typer.Option("--lr", help="Learning rate (default: the model's published one).")
        ] = None,
        online_augment: Annotated[
            bool, typer.Option("--online-augment", help="Random classic transforms per batch.")
        ] = False,
        class_weights: Annotated[
            str, typer.Option("--class-weights", help="none or balanced (inverse frequency).")
        ] = "none",
        freeze_backbone: Annotated[
            bool | None,
            typer.Option(
                "--freeze-backbone/--fine-tune",
                help="Freeze the pretrained backbone or fine-tune it (default: the model's).",
                show_default=False,
            ),
        ] = None,
        pretrained: Annotated[
            bool | None,
            typer.Option(
                "--pretrained/--no-pretrained",
                help="ImageNet weights (default: the model's).",
                show_default=False,
            ),
        ] = None,
        weights: Annotated[
            Path | None, typer.Option("--weights", help="Local file of the backbone's pretrained weights.")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
        resume: Annotated[
            str | None, typer.Option("--resume", help="auto (latest unfinished run) or a run folder.")
        ] = None,
        nproc: Annotated[
            int, typer.Option("--nproc", help="Processes for DistributedDataParallel (launches torchrun).")
        ] = 1,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Train a classifier; the best epoch by validation macro ROC-AUC is saved as best.pt."""
        cfg_file, opts = load_config_and_opts(config, opt)
        v = apply_command_config(
            typer_ctx,
            cfg_file,
            "train-classifier",
            dict(
                arch=arch,
                data=data,
                classes=classes,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                online_augment=online_augment,
                class_weights=class_weights,
                seed=seed,
                device=device,
                nproc=nproc,
            ),
        )
        ws = workspace_from(workspace)
        registry = ctx.registry
        run_dir = None
        if resume is not None:
            run_dir = _resume_target(ws, resume, v["arch"])
            if run_dir is None:
                console.print("[yellow]--resume auto: no unfinished classifier run; starting a new one.[/]")
        if run_dir is not None:
            saved = read_options(run_dir)
            train_config = ClassifierTrainConfig(**saved["config"])
            if typer_ctx.get_parameter_source("epochs").name != "DEFAULT":
                train_config.epochs = int(v["epochs"])  # continue a finished run for more epochs
            cls = registry.get("classifier", train_config.arch)
            options = resolve_options(
                cls.Options, plugin=f"classifier {train_config.arch}", config=train_config.options
            )
            dataset = open_dataset(ws, registry, train_config.data)
        else:
            if v["arch"] is None:
                raise OptionsError(
                    "name a classifier, e.g. `cxraug train-classifier densenet121` "
                    f"(installed: {', '.join(registry.names('classifier'))})"
                )
            cls = registry.get("classifier", v["arch"])
            table = dict(cfg_file.get("classifier", {}).get(v["arch"], {}))
            if freeze_backbone is not None:
                if "freeze_backbone" not in cls.Options.model_fields:
                    raise OptionsError(f"--freeze-backbone: {v['arch']} has no pretrained backbone to freeze")
                opts = {**opts, "freeze_backbone": freeze_backbone}
            options = resolve_options(cls.Options, plugin=f"classifier {v['arch']}", config=table, opts=opts)
            dataset = open_dataset(ws, registry, v["data"])
            wanted = split_list(v["classes"])
            unknown = [c for c in wanted if c not in dataset.classes]
            if unknown:
                raise OptionsError(
                    f"--classes {','.join(unknown)}: not in dataset {dataset.name!r} "
                    f"(its classes: {', '.join(dataset.classes)})"
                )
            use_pretrained = cls.pretrained_by_default if pretrained is None else pretrained
            if weights is not None:
                if not weights.is_file():
                    raise OptionsError(f"--weights {weights}: no such file")
                use_pretrained = True
            train_config = ClassifierTrainConfig(
                arch=v["arch"],
                data=dataset.name,
                classes=[c for c in dataset.classes if c in wanted] if wanted else list(dataset.classes),
                epochs=int(v["epochs"]),
                batch_size=int(v["batch_size"]),
                lr=v["lr"],
                online_augment=bool(v["online_augment"]),
                class_weights=str(v["class_weights"]),
                seed=int(v["seed"]),
                device=str(v["device"]),
                pretrained=use_pretrained,
                weights=str(weights) if weights else None,
                options=options.model_dump(mode="json"),
                augment_options=dict(cfg_file.get("augmenter", {}).get("classic", {})),
            )
        if len(train_config.classes) < 2:
            raise OptionsError("a classifier needs at least two classes")
        if train_config.epochs < 1 or train_config.batch_size < 1:
            raise OptionsError("--epochs and --batch-size must be >= 1")
        if train_config.class_weights not in ("none", "balanced"):
            raise OptionsError(f"--class-weights {train_config.class_weights!r}: choose none or balanced")
        if dry_run:
            print_json(
                to_jsonable(
                    {
                        "config": asdict(train_config),
                        "options": options,
                        "dataset": str(dataset.path),
                        "input_size": cls(options).input_size,
                        "lr": train_config.lr if train_config.lr is not None else cls.default_lr,
                    }
                )
            )
            return
        online = None
        if train_config.online_augment:
            aug_cls = registry.get("augmenter", "classic")
            aug_opts = resolve_options(
                aug_cls.Options, plugin="augmenter classic", config=train_config.augment_options
            )
            online = aug_cls(aug_opts).online_transform()
        nproc_v = int(v["nproc"])
        if nproc_v > 1 and not distributed.in_torchrun():
            if run_dir is None:
                run_dir = _start_run(ws, train_config, dataset)
            argv = distributed.strip_flag(distributed.strip_flag(sys.argv[1:], "--nproc"), "--resume")
            code = distributed.launch(nproc_v, [*argv, "--resume", str(run_dir)])
            if code:
                raise typer.Exit(code)
            return  # rank 0 of the launched processes reported
        device_t, dist_ctx = pick_device(train_config.device), None
        dist_ctx, device_t = distributed.init_distributed(device_t)
        try:
            if run_dir is None:
                path = str(_start_run(ws, train_config, dataset)) if dist_ctx.is_main else None
                run_dir = Path(distributed.broadcast_str(path) or "")
            if dist_ctx.is_main:
                console.print(f"run folder: {run_dir}")
            fresh = not (run_dir / "checkpoints").is_dir()
            try:
                trainer = ClassifierTrainer(
                    cls,
                    options,
                    train_config,
                    dataset,
                    run_dir,
                    online=online,
                    dist=dist_ctx,
                    device=device_t,
                )
                best = trainer.train()
            except CxrError:
                if fresh and dist_ctx.is_main and not (run_dir / "checkpoints").is_dir():
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            distributed.barrier()
            if dist_ctx.is_main:
                finish_run(run_dir, best=best)
                _report(run_dir)
        finally:
            distributed.shutdown()


def _start_run(ws, config: ClassifierTrainConfig, dataset) -> Path:
    return start_run(ws, "classifier", config.arch, asdict(config), dataset)


def _resume_target(ws, resume: str, arch: str | None) -> Path | None:
    if resume != "auto":
        return resolve_run(ws, "classifier", resume)
    unfinished = []
    for run in list_runs(ws, "classifier"):
        options = read_options(run)
        if (arch is None or options.get("arch") == arch) and options.get("status") != "finished":
            unfinished.append(run)
    return unfinished[-1] if unfinished else None


def _report(run_dir: Path) -> None:
    options = read_options(run_dir)
    best = options.get("best", {})
    console.print(f"[green]done:[/] {run_dir}", soft_wrap=True)
    if best:
        console.print(
            f"best epoch {best.get('epoch')}: validation macro AUC {best.get('val_auc_macro'):.4f} "
            f"-> {run_dir / 'best.pt'}",
            soft_wrap=True,
        )
    console.print(f"log: {run_dir / 'log.csv'}  curves: {run_dir / 'metrics.png'}", soft_wrap=True)
    console.print("evaluate on the test split: `cxraug evaluate --roc`")


def _epilog(ctx: AppContext) -> str:
    try:
        registry = ctx.registry
    except Exception:  # pragma: no cover
        return ""
    lines = ["Classifiers and their --opt keys:\n\n"]
    for name in registry.names("classifier"):
        cls = registry.get("classifier", name)
        keys = ", ".join(f"{k}={d}" for k, d, _ in options_table(cls.Options)) or "no options"
        lines.append(
            f"[bold]{name}[/] ({cls.input_size}px, lr {cls.default_lr:g}): "
            f"{escape(cls.description)} ({escape(keys)})\n\n"
        )
    return "".join(lines)
