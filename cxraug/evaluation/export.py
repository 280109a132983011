"""``cxraug export``: a GAN run's generator as a shareable file, with a model card.

Three formats: ``safetensors`` (weights only, read back by ``cxraug generate --checkpoint``),
``onnx`` (a graph z [, label] -> images, for runtimes without PyTorch) and ``torchscript`` (a
traced module, for PyTorch without cxraug). Each export writes one file per generator (a per-class
run has one generator per label), ``MODEL_CARD.md`` (Hugging Face model card layout: YAML front
matter, then Markdown) and ``model_card.json`` with the same facts. It lives at the evaluation
layer because the card reports the run's FID/KID from its evaluation reports.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from cxraug import __version__
from cxraug.data.prepared import read_info
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.evaluation.command import EvaluationRun
from cxraug.fileio import atomic_write
from cxraug.interfaces import GAN
from cxraug.registry import Registry
from cxraug.settings import Settings
from cxraug.training.checkpoint import safe_load
from cxraug.training.gan_run import GanRun
from cxraug.training.generate import LoadedGenerator
from cxraug.training.generator_file import generator_network, header, write_generator_file
from cxraug.workspace import Workspace

log = logging.getLogger(__name__)

Format = Literal["safetensors", "onnx", "torchscript"]
SUFFIX: dict[str, str] = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
INSTALL_HINT = 'pip install "cxraug[export]"'
CARD, SIDECAR = "MODEL_CARD.md", "model_card.json"
#: Largest difference accepted between an ONNX / TorchScript export and PyTorch's own images.
TOLERANCE = 1e-4
#: The batch an ONNX / TorchScript graph is traced with when it may take any batch (torch.export
#: specialises a dimension of size 1, so it cannot become dynamic from an example of 1).
EXAMPLE_BATCH = 2
SYNTHETIC_NOTICE = (
    "The images this generator makes are synthetic. They depict no real patient and are not for "
    "diagnosis, clinical decisions or any medical use."
)


class ExportSettings(Settings):
    """``cxraug export``."""

    section = "export"

    run: str
    format: Format = "safetensors"
    out: str | None = None
    force: bool = False
    batch_size: int = Field(1, ge=1, le=4096)


@dataclass
class ExportedFile:
    path: Path
    labels: list[str]
    network: str
    #: None: the graph takes any batch; else the one batch it takes (ONNX / TorchScript).
    fixed_batch: int | None = None
    #: Largest |export - PyTorch| measured on sample latents (ONNX / TorchScript), None if not checked.
    max_abs_diff: float | None = None
    checked: str = ""


@dataclass
class ExportResult:
    out: Path
    files: list[ExportedFile] = field(default_factory=list)
    card: Path | None = None
    sidecar: Path | None = None


# ------------------------------------------------------------------------------------ the graph


class GeneratorGraph(nn.Module):
    """``forward(z, label)`` -> images (N, C, S, S) in [-1, 1]: the GAN's own ``generate`` at
    truncation 1, whose noise is fixed (StyleGAN2's constant noise), so the graph is deterministic."""

    def __init__(self, gan: GAN[Any]) -> None:
        super().__init__()
        # registered so the graph's parameters are the network's weights, not baked-in constants
        self.network = gan.networks()[generator_network(gan)]
        self.gan = gan

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.gan.generate(z, label, 1.0)


class UnconditionalGraph(GeneratorGraph):
    """``forward(z)``: a generator of one label (per-class or pooled) takes no label input."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.gan.generate(z, torch.zeros_like(z[:, 0], dtype=torch.long), 1.0)


def takes_label(gan: GAN[Any]) -> bool:
    return gan.conditional and len(gan.spec.labels) > 1


def _graph(gan: GAN[Any]) -> GeneratorGraph:
    return (GeneratorGraph if takes_label(gan) else UnconditionalGraph)(gan).eval()


def example_inputs(gan: GAN[Any], batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Latents (and labels cycling through the GAN's labels) for tracing and checks."""
    z = gan.sample_latents(batch, torch.Generator().manual_seed(seed))
    if not takes_label(gan):
        return (z,)
    return (z, torch.arange(batch, dtype=torch.long) % len(gan.spec.labels))


def _reference(gan: GAN[Any], inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    with torch.no_grad():
        return _graph(gan)(*inputs).detach().cpu().numpy()


# ------------------------------------------------------------------------------------ formats


def _need_export_extra() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise OptionsError(f"--format onnx needs the onnx and onnxscript packages: {INSTALL_HINT}") from None


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters' progress lines and tracer warnings about shape checks are not for users
    (onnxscript's optimizer and onnx_ir log dozens of INFO lines per export through logging)."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")


def _onnx_program(gan: GAN[Any], batch: int | None) -> Any:
    """torch.onnx's dynamo exporter; ``batch`` None asks for a graph of any batch size."""
    inputs = example_inputs(gan, batch or EXAMPLE_BATCH)
    names = ["z", "label"][: len(inputs)]
    kwargs: dict[str, Any] = {}
    if batch is None:
        dim = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = {name: {0: dim} for name in names}
    with _quiet():
        return torch.onnx.export(
            _graph(gan),
            inputs,
            dynamo=True,
            input_names=names,
            output_names=["images"],
            verbose=False,
            **kwargs,
        )


def _write_onnx(gan: GAN[Any], path: Path, batch: int, meta: dict[str, str]) -> ExportedFile:
    _need_export_extra()
    import onnx

    fixed: int | None = batch
    program = None
    if _traced_any_batch(gan)[1]:  # else the exporter would spend many seconds failing at it
        try:
            program, fixed = _onnx_program(gan, None), None
        except Exception as exc:  # noqa: BLE001 - any exporter failure: fall back to one fixed batch
            log.debug("dynamic-batch ONNX export failed (%s); exporting batch %d", str(exc)[:200], batch)
    if program is None:
        program = _onnx_program(gan, batch)
    model = program.model_proto
    onnx.helper.set_model_props(model, {**meta, "cxraug_batch": str(fixed or "any")})
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    exported = ExportedFile(path, list(gan.spec.labels), meta["network"], fixed_batch=fixed)
    _check_onnx(gan, exported)
    return exported


def _check_onnx(gan: GAN[Any], exported: ExportedFile) -> None:
    """Run the file with onnxruntime and compare with PyTorch (skipped when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        exported.checked = f"not checked (onnxruntime is not installed: {INSTALL_HINT})"
        return
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]

    _compare(gan, exported, run, f"onnxruntime {ort.__version__}")


def _trace(gan: GAN[Any], batch: int) -> Any:
    with _quiet(), torch.no_grad():
        return torch.jit.trace(_graph(gan), example_inputs(gan, batch), check_trace=False)


def _traced_any_batch(gan: GAN[Any]) -> tuple[Any, bool]:
    """A trace from an example batch, and whether it also gives PyTorch's images at another batch.

    A Python int taken from the batch (StyleGAN2's grouped convolution uses it as the group count)
    becomes a constant of the trace, and of an ONNX graph alike; the cheap trace tells both.
    """
    traced = _trace(gan, EXAMPLE_BATCH)
    other = example_inputs(gan, EXAMPLE_BATCH + 1, seed=1)
    try:
        with _quiet(), torch.no_grad():
            out = traced(*other).numpy()
    except RuntimeError:
        return traced, False
    return traced, float(np.abs(out - _reference(gan, other)).max()) <= TOLERANCE


def _write_torchscript(gan: GAN[Any], path: Path, batch: int, meta: dict[str, str]) -> ExportedFile:
    traced, dynamic = _traced_any_batch(gan)
    fixed = None if dynamic else batch
    if fixed is not None:
        traced = _trace(gan, fixed)
    buffer = io.BytesIO()
    extra = {"cxraug.json": json.dumps({**meta, "cxraug_batch": str(fixed or "any")})}
    with _quiet():  # torch.jit is deprecated in favour of torch.export, and says so on every call
        torch.jit.save(traced, buffer, _extra_files=extra)
        data = buffer.getvalue()
        atomic_write(path, lambda f: f.write(data))
        reloaded = torch.jit.load(str(path), map_location="cpu")
    exported = ExportedFile(path, list(gan.spec.labels), meta["network"], fixed_batch=fixed)

    def run(inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        with torch.no_grad():
            return reloaded(*inputs).numpy()

    _compare(gan, exported, run, "reloaded with torch.jit.load")
    return exported


def _compare(
    gan: GAN[Any], exported: ExportedFile, run: Callable[[tuple[torch.Tensor, ...]], np.ndarray], how: str
) -> None:
    """Largest |export - PyTorch| on sample latents (two batch sizes when any batch is allowed);
    over TOLERANCE is a bug in the exporter or in the GAN's generate: the file is removed."""
    batches = [exported.fixed_batch] if exported.fixed_batch else [EXAMPLE_BATCH, EXAMPLE_BATCH + 1]
    diff = 0.0
    for seed, batch in enumerate(batches, start=1):
        inputs = example_inputs(gan, batch, seed)
        diff = max(diff, float(np.abs(run(inputs) - _reference(gan, inputs)).max()))
    exported.max_abs_diff = diff
    exported.checked = f"{how} vs PyTorch, batch {', '.join(map(str, batches))}"
    if diff > TOLERANCE:
        exported.path.unlink(missing_ok=True)
        raise RuntimeError(f"{exported.path}: the export differs from PyTorch by {diff:.3g}; removed")


# ------------------------------------------------------------------------------------ the export


def _generators(run: GanRun, registry: Registry) -> list[tuple[str, LoadedGenerator]]:
    """(file stem, generator) per model of the run: ``generator``, or ``generator-LABEL`` per label."""
    unique: dict[int, LoadedGenerator] = {}
    for loaded, _ in run.load_generators(registry, torch.device("cpu")).values():
        unique.setdefault(id(loaded), loaded)
    gens = list(unique.values())
    if len(gens) == 1:
        return [("generator", gens[0])]
    return [(f"generator-{'-'.join(g.labels)}", g) for g in gens]


def _target(workspace: Workspace, run: GanRun, s: ExportSettings) -> Path:
    out = Path(s.out) if s.out else workspace.root / "exports" / f"{run.name}-{s.format}"
    if out.exists() and not out.is_dir():
        raise OptionsError(f"--out {out}: a file, not a folder; choose a folder for the export")
    return out


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    taken = [p for p in paths if p.exists()]
    if taken and not force:
        raise OptionsError(
            f"{taken[0]} already exists (an earlier export?); pass --force to replace it, or choose "
            "another --out"
        )


def export_generator(workspace: Workspace, registry: Registry, s: ExportSettings) -> ExportResult:
    """Write the run's generator(s) in ``s.format`` with MODEL_CARD.md and model_card.json."""
    run = GanRun.resolve(workspace, s.run)
    if s.format == "onnx":
        _need_export_extra()  # before the networks are loaded: a missing package is said at once
    gens = _generators(run, registry)
    out = _target(workspace, run, s)
    files = [out / f"{stem}{SUFFIX[s.format]}" for stem, _ in gens]
    _refuse_overwrite([*files, out / CARD, out / SIDECAR], s.force)
    out.mkdir(parents=True, exist_ok=True)
    result = ExportResult(out)
    for path, (_, loaded) in zip(files, gens, strict=True):
        provenance = {"run": run.name, "cxraug_version": __version__, "checkpoint_sha256": loaded.sha256}
        meta = header(loaded.gan, loaded.arch, provenance)
        if s.format == "safetensors":
            write_generator_file(path, loaded.gan, loaded.arch, provenance)
            result.files.append(ExportedFile(path, list(loaded.labels), meta["network"]))
        elif s.format == "onnx":
            result.files.append(_write_onnx(loaded.gan, path, s.batch_size, meta))
        else:
            result.files.append(_write_torchscript(loaded.gan, path, s.batch_size, meta))
    facts = card_facts(workspace, registry, run, gens, result, s.format)
    sidecar = json.dumps(facts, indent=2) + "\n"
    atomic_write(out / SIDECAR, lambda f: f.write(sidecar.encode("utf-8")))
    card = render_card(facts)
    atomic_write(out / CARD, lambda f: f.write(card.encode("utf-8")))
    result.card, result.sidecar = out / CARD, out / SIDECAR
    return result


# ------------------------------------------------------------------------------------ the card


def _training_data(workspace: Workspace, registry: Registry, run: GanRun) -> dict[str, Any]:
    ref = run.record.dataset
    if ref is None:
        return {"dataset": None, "sources": []}
    data: dict[str, Any] = {
        "dataset": ref.name,
        "images": ref.rows,
        "synthetic_source": ref.synthetic,
        "fingerprint": ref.fingerprint,
        "sources": [],
    }
    try:
        info = read_info(Path(ref.path) / "info.json")
    except DataError as exc:  # the dataset was moved or deleted since training: say so, not fail
        data["note"] = f"prepared dataset not readable now ({exc})"
        return data
    for source in info.get("sources", []):
        name = str(source.get("adapter", ""))
        try:
            licence = registry.dataset(name).license
        except CxrError:  # an adapter no longer installed: its licence is unknown here
            licence = ""
        data["sources"].append({"adapter": name, "license": licence or "unknown — check the source"})
    return data


def _distance_keys(values: dict[str, Any]) -> list[str]:
    """FID/KID entries of an evaluation's values: ``fid``, ``kid`` (Inception) and ``fid@NET``,
    ``kid@NET`` for other feature networks (``--features xrv``), Inception first."""
    keys = [k for k in values if k.split("@")[0] in ("fid", "kid")]
    return sorted(keys, key=lambda k: ("@" in k, k.split("@")[-1] if "@" in k else "", k))


def _evaluation(workspace: Workspace, run: GanRun) -> dict[str, Any] | None:
    """FID/KID of the newest evaluation report made from this run, with their feature settings."""
    found = None
    for report in EvaluationRun.all(workspace):
        try:
            doc = report.metrics()
        except (OSError, ValueError):
            continue
        gan_run = (doc.get("sources") or {}).get("gan_run")
        values = doc.get("values") or {}
        if gan_run and Path(gan_run).resolve() == run.path.resolve() and _distance_keys(values):
            found = (report, doc)
    if found is None:
        return None
    report, doc = found
    out: dict[str, Any] = {"report": str(report.path), "created": doc.get("created", "")}
    for name in _distance_keys(doc["values"]):
        if name in doc["values"]:
            options = (doc.get("options") or {}).get(name, {})
            out[name] = {
                "values": doc["values"][name],
                "features": options.get("features", "inception"),
                "mode": options.get("mode", ""),
                "real_split": (doc.get("sources") or {}).get("real_split", ""),
                "n_generated": (doc.get("request") or {}).get("n"),
            }
    return out


def card_facts(
    workspace: Workspace,
    registry: Registry,
    run: GanRun,
    gens: list[tuple[str, LoadedGenerator]],
    result: ExportResult,
    fmt: str,
) -> dict[str, Any]:
    """Everything the model card states, as plain JSON values (also written as model_card.json)."""
    record, settings = run.record, run.settings
    first = gens[0][1]
    counters: dict[str, Any] = {}
    with contextlib.suppress(DataError):
        counters = dict(safe_load(first.checkpoint).get("counters", {}))
    return {
        "synthetic_notice": SYNTHETIC_NOTICE,
        "format": fmt,
        "files": [
            {
                "file": f.path.name,
                "labels": f.labels,
                "network": f.network,
                "batch": f.fixed_batch or "any",
                "max_abs_diff_vs_pytorch": f.max_abs_diff,
                "checked": f.checked,
            }
            for f in result.files
        ],
        "run": {
            "name": run.name,
            "status": record.status.value,
            "started": record.started,
            "finished": record.finished,
            "cxraug_version": record.cxraug_version,
            "command": " ".join(record.command),
        },
        "cxraug_version": __version__,
        "architecture": first.arch,
        "options": first.gan.options.model_dump(mode="json"),
        "conditional": takes_label(first.gan),
        "per_class": len(gens) > 1,
        "image_size": first.gan.spec.image_size,
        "channels": first.gan.spec.channels,
        "labels": run.labels or list(settings.classes),
        "latent": {"shape": list(first.gan.sample_latents(1, torch.Generator().manual_seed(0)).shape[1:])},
        "output": "images (N, C, S, S), float32 in [-1, 1]; uint8 = round((x + 1) * 127.5)",
        "seed": settings.seed,
        "training": {
            "epochs": settings.epochs,
            "kimg": settings.kimg,
            "batch_size": settings.batch_size,
            "transfer": settings.transfer,
            "step": counters.get("step"),
            "kimg_done": counters.get("kimg"),
        },
        "training_data": _training_data(workspace, registry, run),
        "evaluation": _evaluation(workspace, run),
        "evaluate_command": f"cxraug evaluate --gan {run.name} --fid --kid",
    }


def render_card(f: dict[str, Any]) -> str:
    """MODEL_CARD.md: Hugging Face front matter (tags, licence of the weights unknown: "other")."""
    data = f["training_data"]
    labels = f["labels"]
    lines = [
        "---",
        "library_name: cxraug",
        "tags:",
        *(f"- {t}" for t in ("gan", "image-generation", "chest-x-ray", "synthetic-data", f["architecture"])),
        # the weights' own terms are the training data's (below): no SPDX id fits, hence "other"
        "license: other",
        "license_name: training-data-terms",
        "---",
        "",
        f"# {f['architecture']} chest X-ray generator ({f['run']['name']})",
        "",
        f"> **{f['synthetic_notice']}**",
        "",
        "## Files",
        "",
        "| file | labels | network | batch | checked against PyTorch |",
        "|---|---|---|---|---|",
    ]
    for item in f["files"]:
        diff = item["max_abs_diff_vs_pytorch"]
        check = f"max abs diff {diff:.2e} ({item['checked']})" if diff is not None else item["checked"] or "-"
        lines.append(
            f"| `{item['file']}` | {', '.join(item['labels'])} | {item['network']} | {item['batch']} "
            f"| {check} |"
        )
    lines += ["", _usage(f), "", "## Model", ""]
    latent = " x ".join(map(str, f["latent"]["shape"]))
    lines += [
        f"- architecture: `{f['architecture']}`, options: `{json.dumps(f['options'], sort_keys=True)}`",
        f"- image size: {f['image_size']} x {f['image_size']}, {f['channels']} channel(s), values in [-1, 1]",
        f"- labels: {', '.join(labels) or '(one model of all labels pooled)'}"
        + (" (label input: index into this list)" if f["conditional"] else ""),
        f"- latent: {latent} float32, standard normal (`{f['architecture']}` sample_latents)",
        f"- seed of the run: {f['seed']}",
        f"- cxraug version: {f['cxraug_version']} "
        f"(run trained with {f['run']['cxraug_version'] or 'unknown'})",
        "",
        "## Training",
        "",
    ]
    t = f["training"]
    budget = (
        f"{t['epochs']} epochs" if t["epochs"] else f"{t['kimg']} kimg" if t["kimg"] else "default budget"
    )
    lines += [
        f"- length: {budget} per model; step {t['step']}, {t['kimg_done']} kimg seen at the exported "
        "checkpoint",
        f"- batch size: {t['batch_size']}" + (f"; started from {t['transfer']}" if t["transfer"] else ""),
        f"- run: `{f['run']['name']}` ({f['run']['status']}), command: `{f['run']['command']}`",
        "",
        "## Training data",
        "",
    ]
    if data["dataset"] is None:
        lines.append("- unknown: the run does not record its dataset")
    else:
        lines.append(
            f"- prepared dataset `{data['dataset']}`: {data['images']} training images "
            f"(fingerprint {data['fingerprint'][:16]})"
            + (" — synthetic phantoms, not real X-rays" if data["synthetic_source"] else "")
        )
        for source in data["sources"]:
            lines.append(f"- source `{source['adapter']}`, licence: {source['license']}")
        if data.get("note"):
            lines.append(f"- note: {data['note']}")
    lines += ["", "## Evaluation", ""]
    ev = f["evaluation"]
    if ev is None:
        lines.append(f"FID/KID: not computed. Compute them with `{f['evaluate_command']}`.")
    else:
        others = [n for n in ev if "@" in n and n.split("@")[0] in ("fid", "kid")]  # e.g. fid@xrv
        for name in ["fid", "kid", *others]:
            if name not in ev:
                lines.append(f"- {name.upper()}: not computed")
                continue
            m = ev[name]
            values = ", ".join(f"{k} = {v:.4g}" for k, v in m["values"].items())
            lines.append(
                f"- {name.upper()}: {values} (features: {m['features']}, clean-fid mode {m['mode']}, "
                f"against the real {m['real_split']} split)"
            )
        lines.append(f"- from `{ev['report']}` ({ev['created']}); the run may have trained further since")
    lines += [
        "",
        "## Intended use and limits",
        "",
        f"{f['synthetic_notice']} Use them to augment or study training sets for research. They inherit "
        "the biases of the training data and its licence terms (above).",
        "",
    ]
    return "\n".join(lines)


def _usage(f: dict[str, Any]) -> str:
    name = f["files"][0]["file"]
    if f["format"] == "safetensors":
        return f"Use: `cxraug generate --checkpoint {name} --n 64` rebuilds the network from the file alone."
    if f["format"] == "onnx":
        feeds = "z (N, latent) float32" + (", label (N,) int64" if f["conditional"] else "")
        return f"Use: onnxruntime `InferenceSession('{name}')` with inputs {feeds}; output `images`."
    args = "z, label" if f["conditional"] else "z"
    return f"Use: `torch.jit.load('{name}')({args})` returns the images."
