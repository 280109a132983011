"""``cxraug augment``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    workspace_from,
)
from cxraug.data.augment import AugmentStep, augment_dataset, balanced_counts, origin_counts
from cxraug.data.resolve import open_dataset
from cxraug.errors import OptionsError
from cxraug.options import resolve_options, to_jsonable
from cxraug.training.gan_trainer import pick_device
from cxraug.training.runs import gan_labels, read_options, resolve_run
from cxraug.ui import console


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("augment")
    @handle_errors
    def augment(
        typer_ctx: typer.Context,
        data: Annotated[
            str | None,
            typer.Option("--data", help="Source dataset (default: the GAN run's, else the latest)."),
        ] = None,
        synthetic: Annotated[
            int, typer.Option("--synthetic", help="Synthetic images to add (balanced over labels).")
        ] = 0,
        gan: Annotated[
            str | None, typer.Option("--gan", help="GAN run for synthetic images (default: latest).")
        ] = None,
        label: Annotated[
            str | None, typer.Option("--label", help="Put all new images in this label.")
        ] = None,
        per_class: Annotated[
            str | None, typer.Option("--per-class", help="Synthetic counts per label: covid=600,normal=400.")
        ] = None,
        classic: Annotated[
            int, typer.Option("--classic", help="Classic-augmented images to add (balanced over labels).")
        ] = 0,
        classic_per_class: Annotated[
            str | None, typer.Option("--classic-per-class", help="Classic counts per label.")
        ] = None,
        truncation: Annotated[float, typer.Option("--truncation", help="Truncation psi of the GAN.")] = 1.0,
        filter_run: Annotated[
            Path | None,
            typer.Option("--filter", help="Classifier run that must recognise each synthetic image's label."),
        ] = None,
        min_confidence: Annotated[
            float,
            typer.Option(
                "--min-confidence", help="Probability of the intended label needed to keep a synthetic image."
            ),
        ] = 0.5,
        name: Annotated[
            str | None, typer.Option("--name", help="New dataset name (default: derived).")
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
        device: Annotated[
            str, typer.Option("--device", help="auto, cpu, cuda or mps (for the GAN).")
        ] = "auto",
        force: Annotated[
            bool, typer.Option("--force", help="Replace an existing dataset of that name.")
        ] = False,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """New dataset = real training images + classic and/or synthetic ones; val/test untouched."""
        cfg_file, opts = load_config_and_opts(config, opt)
        v = apply_command_config(
            typer_ctx,
            cfg_file,
            "augment",
            dict(
                data=data,
                synthetic=synthetic,
                gan=gan,
                label=label,
                per_class=per_class,
                classic=classic,
                classic_per_class=classic_per_class,
                truncation=truncation,
                min_confidence=min_confidence,
                filter_run=filter_run,
                seed=seed,
                name=name,
                device=device,
            ),
        )
        if label is not None and (per_class or classic_per_class):
            raise OptionsError("give --label or --per-class/--classic-per-class, not both")
        stray = [k for k in opts if k not in ("classic", "synthetic")]
        if stray:
            raise OptionsError(
                f"--opt {stray[0]}=...: prefix augmenter options, e.g. --opt classic.rotation=15 "
                "or --opt synthetic.max_tries=10"
            )
        ws = workspace_from(workspace)
        registry = ctx.registry
        want_synthetic = bool(v["synthetic"] or v["per_class"])
        want_classic = bool(v["classic"] or v["classic_per_class"])
        if not (want_synthetic or want_classic):
            raise OptionsError("nothing to add: give --synthetic N (and/or --classic N)")
        gan_run = None
        if want_synthetic:
            gan_run = resolve_run(ws, "gan", v["gan"])
        data_name = v["data"]
        if data_name is None and gan_run is not None:
            data_name = read_options(gan_run)["config"]["data"]
        source = open_dataset(ws, registry, data_name)
        current = {lb: len(source.indices("train", [lb])) for lb in source.classes}
        steps = []
        if want_classic:
            cls = registry.get("augmenter", "classic")
            options = resolve_options(
                cls.Options,
                plugin="augmenter classic",
                config=cfg_file.get("augmenter", {}).get("classic", {}),
                opts=opts.get("classic", {}),
            )
            counts = _counts(v["classic_per_class"], v["label"], int(v["classic"]), current, source.classes)
            steps.append(AugmentStep(cls(options), counts))
            current = {lb: current[lb] + counts.get(lb, 0) for lb in current}
        if want_synthetic:
            cls = registry.get("augmenter", "synthetic")
            table = dict(cfg_file.get("augmenter", {}).get("synthetic", {}))
            table["run"] = str(gan_run)
            for flag, key in (("truncation", "truncation"), ("min_confidence", "min_confidence")):
                given = typer_ctx.get_parameter_source(flag).name != "DEFAULT"
                if given or key not in table or key in cfg_file.get("augment", {}):
                    table[key] = float(v[flag])
            if v["filter_run"] is not None:
                table["filter_run"] = str(v["filter_run"])
            options = resolve_options(
                cls.Options, plugin="augmenter synthetic", config=table, opts=opts.get("synthetic", {})
            )
            generated = gan_labels(gan_run)
            labels = [lb for lb in source.classes if lb in generated] or source.classes
            counts = _counts(v["per_class"], v["label"], int(v["synthetic"]), current, labels)
            steps.append(AugmentStep(cls(options), counts))
        tag = "".join(f"-{s.augmenter.name[:3]}{sum(s.counts.values())}" for s in steps)
        new_name = v["name"] or f"{source.name}-aug{tag}-s{v['seed']}"
        plan = {
            "source": source.name,
            "name": new_name,
            "gan_run": str(gan_run) if gan_run else None,
            "seed": v["seed"],
            "steps": [
                {"augmenter": s.augmenter.name, "counts": s.counts, "options": s.augmenter.options}
                for s in steps
            ],
        }
        if dry_run:
            print_json(to_jsonable(plan))
            return
        context = {"workspace": ws, "registry": registry, "device": str(pick_device(v["device"]))}
        dataset = augment_dataset(
            ws, source, steps, name=new_name, seed=int(v["seed"]), force=force, context=context
        )
        for step in steps:
            rejected = getattr(step.augmenter, "rejected", None)
            if rejected and any(rejected.values()):
                console.print(f"quality filter rejected: {rejected}")
        _print_table(dataset)
        console.print(
            f"new dataset: {dataset.name} ({dataset.path}); val/test are the source's, unchanged.",
            soft_wrap=True,
        )
        console.print(f"train on it: `cxraug train-classifier ARCH --data {dataset.name}`", soft_wrap=True)


def _counts(
    spec: str | None, label: str | None, n: int, current: dict[str, int], labels: list[str]
) -> dict[str, int]:
    if spec:
        counts = parse_counts(spec, "--per-class")
        bad = [lb for lb in counts if lb not in labels]
        if bad:
            raise OptionsError(
                f"--per-class: {', '.join(bad)} not available here (choose from {', '.join(labels)})"
            )
        return counts
    if label is not None:
        if label not in labels:
            raise OptionsError(f"--label {label!r}: choose one of {', '.join(labels)}")
        return {label: n}
    return balanced_counts(current, n, labels)


def _print_table(dataset) -> None:
    counts = origin_counts(dataset)
    origins = sorted({o for c in counts.values() for o in c}, key=lambda o: (o != "real", o))
    table = Table(title=f"{dataset.name}: training images by label and origin")
    table.add_column("label")
    for o in origins:
        table.add_column(o, justify="right")
    table.add_column("total", justify="right")
    for lb in dataset.classes:
        c = counts.get(lb, {})
        table.add_row(lb, *(str(c.get(o, 0)) for o in origins), str(sum(c.values())))
    console.print(table)
