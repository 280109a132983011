"""``cxraug data``: prepare, list and show datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image
from rich.markup import escape
from rich.table import Table

from cxraug.cli.common import (
    AppContext,
    ConfigOpt,
    DryRunOpt,
    OptOpt,
    WorkspaceOpt,
    given_flags,
    handle_errors,
    load_config_and_opts,
    plugin_epilog,
    print_json,
    workspace_from,
)
from cxraug.data.decode_cache import leftover_caches
from cxraug.data.prepare import (
    PrepareResult,
    PrepareSettings,
    Source,
    check_prepare,
    declared_labels,
    prepare_dataset,
)
from cxraug.data.prepare_command import PrepareCommand, build_sources, parse_sources, take_prepare_opts
from cxraug.data.prepared import PreparedDataset, read_info
from cxraug.data.resolve import open_dataset
from cxraug.data.splits import SPLITS
from cxraug.errors import OptionsError, describe_os_error
from cxraug.options import to_jsonable
from cxraug.settings import build_settings
from cxraug.ui import console
from cxraug.workspace import Workspace


def counts_table(title: str, counts: dict[str, dict[str, int]]) -> Table:
    labels = sorted({lb for c in counts.values() for lb in c})
    table = Table(title=title)
    table.add_column("split")
    for lb in labels:
        table.add_column(lb, justify="right")
    table.add_column("total", justify="right")
    for split in SPLITS:
        c = counts.get(split, {})
        table.add_row(split, *(str(c.get(lb, 0)) for lb in labels), str(sum(c.values())))
    return table


def sample_grid(dataset: PreparedDataset, per_label: int = 8, seed: int = 0) -> Image.Image:
    """A grid image: one row per label, ``per_label`` images of that label from any split."""
    rng = np.random.default_rng(seed)
    s = dataset.size
    rows = []
    for label in dataset.classes:
        idx = dataset.indices(None, [label])
        pick: Any = rng.choice(idx, size=min(per_label, len(idx)), replace=False) if len(idx) else []
        row = np.zeros((s, s * per_label), dtype=np.uint8)
        for k, i in enumerate(sorted(pick)):
            row[:, k * s : (k + 1) * s] = dataset.images[i]
        rows.append(row)
    return Image.fromarray(np.concatenate(rows, axis=0), "L")


SourcesOpt = Annotated[
    list[str],
    typer.Argument(
        help="ADAPTER (with --root) or ADAPTER=PATH, several to merge sources.", show_default=False
    ),
]
RootOpt = Annotated[Path | None, typer.Option("--root", help="Dataset folder (or file) for one ADAPTER.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Dataset name (default: adapter names).")]
SizeOpt = Annotated[int, typer.Option("--size", help="Square image size in pixels.")]
ResizeOpt = Annotated[str, typer.Option("--resize", help="pad (keep whole image) or crop (centre).")]
SplitOpt = Annotated[
    str, typer.Option("--split", help="train,val,test fractions when a source has no official split.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split.")]
ClassesOpt = Annotated[
    list[str] | None, typer.Option("--classes", help="Keep only these labels (comma list).")
]
LabelMapOpt = Annotated[
    list[str] | None,
    typer.Option("--map", help="Merge labels SRC=DST (repeatable), e.g. pneumonia_viral=pneumonia."),
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on any unreadable file instead of skipping.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Decoding processes (0: auto).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing dataset of the same name.")]
ConflictsOpt = Annotated[
    str,
    typer.Option(
        "--conflicts",
        help="Duplicate images with different labels: drop (all copies), keep-first, error. "
        "Also --opt conflicts=...",
    ),
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        help="Refuse images larger than this many pixels (read from the header, before decoding). "
        "Also --opt max_pixels=N.",
    ),
]
MultilabelOpt = Annotated[
    str,
    typer.Option(
        "--multilabel",
        help="An image with several findings (NIH, CheXpert, PadChest...): skip it, take the "
        "first finding, or the one first in --classes (priority). Also --opt multilabel=...",
    ),
]

DicomVoiOpt = Annotated[
    str,
    typer.Option(
        "--dicom-voi",
        help="DICOM gray range: auto (the file's VOI LUT, else its window, else min-max), window "
        "(the file's window before its VOI LUT), full (min-max, ignoring the file's). "
        "Also --opt dicom_voi=...",
    ),
]


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    data = typer.Typer(help="Prepare datasets once; list and inspect them.", no_args_is_help=True)
    app.add_typer(data, name="data")

    @data.command("prepare", epilog=plugin_epilog(lambda: ctx.registry, "dataset", "Adapters"))
    @handle_errors
    def prepare(
        typer_ctx: typer.Context,
        sources: SourcesOpt,
        root: RootOpt = None,
        name: NameOpt = None,
        size: SizeOpt = 256,
        resize: ResizeOpt = "pad",
        split: SplitOpt = "0.7,0.15,0.15",
        seed: SeedOpt = 0,
        classes: ClassesOpt = None,
        label_map: LabelMapOpt = None,
        strict: StrictOpt = False,
        workers: WorkersOpt = 0,
        force: ForceOpt = False,
        conflicts: ConflictsOpt = "drop",
        max_pixels: MaxPixelsOpt = PrepareCommand.defaults()["max_pixels"],
        multilabel: MultilabelOpt = "skip",
        dicom_voi: DicomVoiOpt = PrepareCommand.defaults()["dicom_voi"],
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Decode every image once into a memory-mapped cache with a manifest and splits."""
        cfg, opts = load_config_and_opts(config, opt, ctx.registry)
        flags = given_flags(typer_ctx, PrepareCommand)
        flags.update(take_prepare_opts(opts, flags))
        command = build_settings(PrepareCommand, flags=flags, config=cfg).settings
        parsed = parse_sources(sources, root)
        built = build_sources(ctx.registry, parsed, cfg, opts)
        settings = command.prepare_settings("-".join(a for a, _ in parsed), declared_labels(built))
        ws = workspace_from(workspace)
        if dry_run:
            check_prepare(ws, built, settings)
            print_json(to_jsonable(_plan(ws, settings, built)))
            return
        _summary(prepare_dataset(ws, built, settings))

    @data.command("list")
    @handle_errors
    def list_(
        as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Prepared datasets of the workspace (the latest is the default for other commands)."""
        ws = workspace_from(workspace)
        names = ws.dataset_names()
        infos = [read_info(ws.dataset_dir(n) / "info.json") for n in names]
        if as_json:
            print_json(infos)
            return
        if not infos:
            console.print(f"No prepared datasets in {ws.root}. `cxraug data prepare phantom` makes the demo.")
            _say_leftovers(ws)
            return
        table = Table(title=f"datasets in {ws.data_dir}")
        for col in ("name", "images", "classes", "size", "sources", "created"):
            table.add_column(col, overflow="fold")
        for n, info in zip(names, infos, strict=True):
            total = sum(sum(c.values()) for c in info["counts"].values())
            srcs = ", ".join(s["adapter"] for s in info["sources"])
            if info.get("synthetic"):
                srcs += " [yellow](synthetic demo)[/]"
            mark = " (latest)" if n == names[-1] else ""
            table.add_row(
                n + mark,
                str(total),
                ", ".join(info["classes"]),
                str(info["size"]),
                srcs,
                info["created"][:19],
            )
        console.print(table)
        _say_leftovers(ws)

    @data.command("show")
    @handle_errors
    def show(
        name: Annotated[str | None, typer.Argument(help="Dataset (default: latest).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Counts per split and label, the prepare notes, and a sample grid PNG."""
        ws = workspace_from(workspace)
        if name is None and ws.latest_dataset() is None:
            raise OptionsError(f"no prepared datasets in {ws.root}; run `cxraug data prepare` first")
        ds = open_dataset(ws, ctx.registry, name)
        grid_path: Path | None = ds.path / "samples.png"
        unwritten = ""
        try:
            sample_grid(ds).save(ds.path / "samples.png")
        except OSError as exc:  # showing a dataset must work in a read-only (e.g. shared) workspace
            unwritten = describe_os_error(exc) or ""
            if not unwritten:
                raise
            grid_path = None
        report_path = ds.path / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        if as_json:
            samples = str(grid_path) if grid_path else None
            print_json({"info": ds.info, "counts": ds.counts(), "samples": samples})
            return
        if ds.synthetic:
            console.print("[yellow]Synthetic demo images (phantoms), not real chest X-rays.[/]")
        console.print(counts_table(f"{ds.name} ({ds.size}px, {len(ds.rows)} images)", ds.counts()))
        for src in ds.info["sources"]:
            console.print(f"source: {src['adapter']} {src['root'] or ''}", highlight=False)
        for note in report.get("notes", []):
            console.print(f"[dim]note:[/] {escape(note)}", highlight=False)
        if grid_path is None:
            console.print(f"[yellow]sample grid not written:[/] {escape(unwritten)}", soft_wrap=True)
        else:
            console.print(f"sample grid (rows: {', '.join(ds.classes)}): {grid_path}")


def _plan(ws: Workspace, settings: PrepareSettings, built: list[Source]) -> dict[str, Any]:
    return {
        "workspace": str(ws.root),
        "dataset": str(ws.dataset_dir(settings.name)),
        "settings": to_jsonable(settings.__dict__),
        "sources": [{"adapter": s.adapter.name, "root": s.root, "options": s.adapter.options} for s in built],
    }


def _summary(result: PrepareResult) -> None:
    ds, report = result.dataset, result.report
    if ds.synthetic:
        console.print("[yellow]Synthetic demo images (phantoms), not real chest X-rays.[/]")
    console.print(f"prepared {ds.name}: {len(ds.rows)} images in {ds.path}", highlight=False, soft_wrap=True)
    console.print(counts_table(ds.name, ds.counts()))
    console.print(
        f"patients: {report['patients']}  exact duplicate copies: "
        f"{report['exact_duplicates']}  near-duplicate pairs: "
        f"{len(report['near_duplicate_pairs'])}  skipped: {len(report['skipped'])}  "
        f"dropped: {len(report['dropped'])}"
    )
    for note in report["notes"]:
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False)
    if report["conflicts"]:
        console.print(
            f"[yellow]{len(report['conflicts'])} group(s) of duplicate images with conflicting labels[/]"
        )
        for group in report["conflicts"][:5]:
            copies = ", ".join(f"{m['original']} ({m['label']})" for m in group["members"])
            console.print(escape(f"  {copies}: {group['action']}"), highlight=False)
    if report["skipped"]:
        console.print(f"[yellow]{len(report['skipped'])} file(s) skipped (unreadable or refused)[/]")
        for s in report["skipped"][:5]:
            console.print(escape(f"  {s['original']}: {s['reason']}"), highlight=False)
    console.print(f"report: {ds.path / 'prepare-report.md'}")


def _say_leftovers(ws: Workspace) -> None:
    """Decoded images an interrupted prepare left (hidden folders that can hold gigabytes)."""
    for name, folder, size in leftover_caches(ws.data_dir):
        console.print(
            f"[yellow]An interrupted `data prepare --name {escape(name)}` left {size / 2**20:.0f} MiB of "
            f"decoded images in {escape(str(folder))}[/]: run that prepare again to resume, or "
            "delete the folder."
        )
