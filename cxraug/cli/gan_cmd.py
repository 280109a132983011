"""``cxraug train-gan`` and ``cxraug generate``."""

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
    parse_counts,
    print_json,
    split_list,
    workspace_from,
)
from cxraug.data.resolve import open_dataset
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.options import options_table, resolve_options, to_jsonable
from cxraug.training import distributed
from cxraug.training.gan_trainer import GANTrainConfig, GANTrainer, gan_units, pick_device
from cxraug.training.generate import generate_images, generators_for
from cxraug.training.runs import (
    finish_run,
    list_runs,
    read_options,
    resolve_run,
    start_run,
    write_json_atomic,
)
from cxraug.ui import console


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    gans_help = _gans_epilog(ctx)

    @app.command("train-gan", epilog=gans_help)
    @handle_errors
    def train_gan(
        typer_ctx: typer.Context,
        arch: Annotated[
            str | None,
            typer.Argument(help="GAN architecture (see `cxraug plugins list --kind gan`)."),
        ] = None,
        data: Annotated[
            str | None,
            typer.Option("--data", help="Prepared dataset (default: latest, or the demo)."),
        ] = None,
        classes: Annotated[
            list[str] | None,
            typer.Option("--classes", help="Labels to model (comma list; default: all)."),
        ] = None,
        size: Annotated[
            int | None, typer.Option("--size", help="Image size (default: the dataset's).")
        ] = None,
        batch_size: Annotated[
            int, typer.Option("--batch-size", help="Images per step (all processes together).")
        ] = 32,
        epochs: Annotated[
            float | None, typer.Option("--epochs", help="Training length in epochs (per model).")
        ] = None,
        kimg: Annotated[
            float | None,
            typer.Option("--kimg", help="Training length in thousands of real images (per model)."),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed (same seed on CPU: identical results).")] = 0,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
        snapshot_every: Annotated[
            str,
            typer.Option(
                "--snapshot-every",
                help="auto (10 per run), N in the budget's unit, or 2ep / 0.5kimg / 100steps.",
            ),
        ] = "auto",
        resume: Annotated[
            str | None,
            typer.Option("--resume", help="auto (latest unfinished run) or a run folder."),
        ] = None,
        per_class: Annotated[
            bool,
            typer.Option(
                "--per-class/--pooled",
                help="Unconditional GANs: one model per label, or one on all labels merged.",
            ),
        ] = True,
        transfer: Annotated[
            Path | None,
            typer.Option("--transfer", help="Start from another run's checkpoint (file or run folder)."),
        ] = None,
        nproc: Annotated[
            int,
            typer.Option("--nproc", help="Processes for DistributedDataParallel (launches torchrun)."),
        ] = 1,
        log_every: Annotated[int, typer.Option("--log-every", help="Steps between log rows.")] = 10,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Train a GAN on a prepared dataset; the run folder records everything needed to resume."""
        cfg_file, opts = load_config_and_opts(config, opt)
        v = apply_command_config(
            typer_ctx,
            cfg_file,
            "train-gan",
            dict(
                arch=arch,
                data=data,
                classes=classes,
                size=size,
                batch_size=batch_size,
                epochs=epochs,
                kimg=kimg,
                seed=seed,
                device=device,
                snapshot_every=snapshot_every,
                per_class=per_class,
                transfer=transfer,
                log_every=log_every,
                nproc=nproc,
            ),
        )
        if v["epochs"] is not None and v["kimg"] is not None:
            raise OptionsError("give --epochs or --kimg, not both")
        ws = workspace_from(workspace)
        registry = ctx.registry
        run_dir: Path | None = None
        if resume is not None:
            run_dir = _resume_target(ws, resume, v["arch"])
            if run_dir is None:
                console.print(
                    "[yellow]--resume auto: no GAN run to continue in this workspace; starting a new one.[/]"
                )
        if run_dir is not None:
            fixed = [
                name
                for name in (
                    "data",
                    "classes",
                    "size",
                    "batch_size",
                    "seed",
                    "snapshot_every",
                    "per_class",
                    "transfer",
                    "log_every",
                )
                if typer_ctx.get_parameter_source(name).name != "DEFAULT"
            ]
            if (fixed or opts) and not distributed.in_torchrun():  # --nproc children repeat the flags
                shown = ", ".join([f"--{n.replace('_', '-')}" for n in fixed] + (["--opt"] if opts else []))
                raise OptionsError(
                    f"--resume continues {run_dir} with the options it recorded; drop {shown} "
                    "(only --kimg/--epochs/--device may change), or start a new run"
                )
            saved = read_options(run_dir)
            config_d = dict(saved["config"])
            if v["epochs"] is not None or v["kimg"] is not None:
                config_d["epochs"], config_d["kimg"] = v["epochs"], v["kimg"]
            train_config = GANTrainConfig(**config_d)
            cls = registry.get("gan", train_config.arch)
            options = resolve_options(
                cls.Options, plugin=f"gan {train_config.arch}", config=train_config.options
            )
            dataset = open_dataset(ws, registry, train_config.data)
            if (
                saved.get("status") == "finished"
                and v["epochs"] is None
                and v["kimg"] is None
                and not distributed.in_torchrun()
            ):
                console.print(
                    f"Run {run_dir} already finished its budget; pass --kimg/--epochs with a larger "
                    "value to train it longer, or leave out --resume to start a new run."
                )
                return
        else:
            if v["arch"] is None:
                raise OptionsError(
                    "name an architecture, e.g. `cxraug train-gan dcgan` "
                    f"(installed: {', '.join(registry.names('gan'))})"
                )
            cls = registry.get("gan", v["arch"])
            table = cfg_file.get("gan", {}).get(v["arch"], {})
            options = resolve_options(cls.Options, plugin=f"gan {v['arch']}", config=table, opts=opts)
            dataset = open_dataset(ws, registry, v["data"])
            wanted = split_list(v["classes"])
            unknown = [c for c in wanted if c not in dataset.classes]
            if unknown:
                raise OptionsError(
                    f"--classes {','.join(unknown)}: not in dataset {dataset.name!r} "
                    f"(its classes: {', '.join(dataset.classes)})"
                )
            budget_kimg = v["kimg"] if v["epochs"] is None and v["kimg"] is None else v["kimg"]
            if v["epochs"] is None and v["kimg"] is None:
                budget_kimg = cls.default_kimg
            train_config = GANTrainConfig(
                arch=v["arch"],
                data=dataset.name,
                classes=[c for c in dataset.classes if c in wanted] if wanted else list(dataset.classes),
                size=int(v["size"] or dataset.size),
                batch_size=int(v["batch_size"]),
                epochs=v["epochs"],
                kimg=budget_kimg,
                seed=int(v["seed"]),
                device=v["device"],
                snapshot_every=str(v["snapshot_every"]),
                per_class=bool(v["per_class"]),
                transfer=str(v["transfer"]) if v["transfer"] else None,
                log_every=int(v["log_every"]),
                options=options.model_dump(mode="json"),
            )
        if train_config.transfer and not Path(train_config.transfer).exists():
            train_config.transfer = str(resolve_run(ws, "gan", train_config.transfer))
        if train_config.batch_size < 1 or train_config.size < 8:
            raise OptionsError("--batch-size must be >= 1 and --size >= 8")
        if dry_run:
            print_json(
                to_jsonable(
                    {
                        "config": asdict(train_config),
                        "options": options,
                        "dataset": str(dataset.path),
                        "run": str(run_dir) if run_dir else None,
                    }
                )
            )
            return
        nproc_v = int(v["nproc"])
        if nproc_v > 1 and not distributed.in_torchrun():
            if run_dir is None:
                run_dir = _start_run(ws, train_config, dataset, cls)
            argv = [a for a in distributed.strip_flag(sys.argv[1:], "--nproc")]
            argv = distributed.strip_flag(argv, "--resume") + ["--resume", str(run_dir)]
            console.print(f"launching {nproc_v} processes (torchrun) for {run_dir}")
            code = distributed.launch(nproc_v, argv)
            if code:
                raise typer.Exit(code)
            return  # rank 0 of the launched processes reported
        device_t = pick_device(train_config.device)
        dist_ctx, device_t = distributed.init_distributed(device_t)
        try:
            if run_dir is None:
                path = str(_start_run(ws, train_config, dataset, cls)) if dist_ctx.is_main else None
                run_dir = Path(distributed.broadcast_str(path) or "")
            elif dist_ctx.is_main:
                saved = read_options(run_dir)
                saved.update(config=asdict(train_config), status="running")
                write_json_atomic(run_dir / "options.json", saved)
            if dist_ctx.is_main:
                console.print(f"run folder: {run_dir}")
                if dataset.synthetic:
                    console.print(
                        "[yellow]Training on the synthetic demo dataset (phantoms, not real X-rays).[/]"
                    )
            fresh = not any(run_dir.rglob("ckpt-*.pt"))
            try:
                trainer = GANTrainer(
                    cls, options, train_config, dataset, run_dir, dist=dist_ctx, device=device_t
                )
                trainer.train()
            except CxrError:
                # a run that failed before its first checkpoint holds nothing worth keeping
                if fresh and dist_ctx.is_main and not any(run_dir.rglob("ckpt-*.pt")):
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            distributed.barrier()
            if dist_ctx.is_main:
                finish_run(run_dir)
                _report_done(run_dir)
        finally:
            distributed.shutdown()

    @app.command("generate")
    @handle_errors
    def generate(
        run: Annotated[
            str | None, typer.Option("--run", help="GAN run folder or name (default: latest).")
        ] = None,
        checkpoint: Annotated[
            Path | None, typer.Option("--checkpoint", help="A checkpoint file instead of a run.")
        ] = None,
        n: Annotated[
            int,
            typer.Option("--n", help="Images in all (split evenly over labels unless --label/--per-class)."),
        ] = 100,
        label: Annotated[
            str | None, typer.Option("--label", help="Only this label (all --n images).")
        ] = None,
        per_class: Annotated[
            str | None, typer.Option("--per-class", help="Counts per label: covid=600,normal=400.")
        ] = None,
        truncation: Annotated[float, typer.Option("--truncation", help="Truncation psi (1 = none).")] = 1.0,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the latents.")] = 0,
        out: Annotated[
            Path | None,
            typer.Option("--out", help="Output folder (default: WORKSPACE/generated/RUN-sSEED)."),
        ] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Write generated PNGs in class folders with a manifest; re-running resumes."""
        if run is not None and checkpoint is not None:
            raise OptionsError("give --run or --checkpoint, not both")
        if label is not None and per_class is not None:
            raise OptionsError("give --label or --per-class, not both")
        ws = workspace_from(workspace)
        run_dir = None if checkpoint is not None else resolve_run(ws, "gan", run)
        if checkpoint is not None and not checkpoint.is_file():
            raise DataError(f"--checkpoint {checkpoint}: no such file")
        gens = generators_for(run_dir, checkpoint, ctx.registry, pick_device(device))
        labels = list(gens)
        if per_class is not None:
            counts = parse_counts(per_class, "--per-class")
        elif label is not None:
            counts = {label: n}
        else:
            base, extra = divmod(n, len(labels))
            counts = {lb: base + (1 if i < extra else 0) for i, lb in enumerate(labels)}
        name = (
            (run_dir.name if run_dir else checkpoint.stem)
            + f"-s{seed}"
            + (f"-t{truncation:g}" if truncation != 1 else "")
        )
        target = out or ws.root / "generated" / name
        written = generate_images(
            gens, counts, target, seed=seed, truncation=truncation, batch_size=batch_size
        )
        skipped = sum(counts.values()) - sum(written.values())
        console.print(
            f"wrote {sum(written.values())} images to {target}"
            + (f" ({skipped} already there)" if skipped else "")
        )
        console.print(f"manifest: {target / 'manifest.csv'}")


def _start_run(ws, train_config: GANTrainConfig, dataset, cls) -> Path:
    return start_run(
        ws,
        "gan",
        train_config.arch,
        asdict(train_config),
        dataset,
        conditional=cls.conditional,
        units=gan_units(cls, train_config),
    )


def _resume_target(ws, resume: str, arch: str | None) -> Path | None:
    if resume != "auto":
        return resolve_run(ws, "gan", resume)
    runs = [r for r in list_runs(ws, "gan") if arch is None or read_options(r).get("arch") == arch]
    unfinished = [r for r in runs if read_options(r).get("status") != "finished"]
    if unfinished:
        return unfinished[-1]
    return runs[-1] if runs else None  # finished: continued only with a larger --kimg/--epochs


def _report_done(run_dir: Path) -> None:
    options = read_options(run_dir)
    config = options["config"]
    console.print(f"[green]done:[/] {run_dir}")
    for unit in options["units"]:
        folder = run_dir if unit == "all" else run_dir / unit
        console.print(
            f"  {unit}: samples {folder / 'samples'}  losses {folder / 'losses.png'}  "
            f"animation {folder / 'progress.gif'}",
            soft_wrap=True,
        )
    budget = (
        f"--epochs {config['epochs']}" if config.get("epochs") is not None else f"--kimg {config.get('kimg')}"
    )
    console.print(
        f"trained {budget} per model. Train longer: `cxraug train-gan --resume {run_dir} --kimg N` "
        "with a larger N; generate images: `cxraug generate --n 1000`."
    )


def _gans_epilog(ctx: AppContext) -> str:
    try:
        registry = ctx.registry
    except Exception:  # pragma: no cover
        return ""
    lines = ["GANs and their --opt keys:\n\n"]
    for name in registry.names("gan"):
        cls = registry.get("gan", name)
        keys = ", ".join(f"{k}={d}" for k, d, _ in options_table(cls.Options))
        lines.append(f"[bold]{name}[/]: {escape(cls.description)} ({escape(keys)})\n\n")
    return "".join(lines)
