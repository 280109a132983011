"""The study as jobs: which generator, training set, classifier and analysis jobs it is made of."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxraug.interfaces import ExecJob
from cxraug.training.gan_run import GanRun
from cxraug.workspace import Workspace

if TYPE_CHECKING:
    from cxraug.experiment.runner import ExperimentSettings


def gan_is_run(ws: Workspace, gan: str) -> bool:
    """``--gan`` names an existing GAN run (reused) rather than an architecture to train."""
    from pathlib import Path

    return Path(gan).is_dir() or (GanRun.home(ws) / gan).is_dir()


def cell_tag(arm: str, g: int | None) -> str:
    """File and dataset tag of an arm's cell: ``classic-gan-g1`` (generator 1) or ``classic``."""
    return arm.replace("+", "-") + (f"-g{g}" if g is not None else "")


def parse_tag(tag: str) -> tuple[str, int | None]:
    """``classic-gan-g1`` -> (``classic+gan``, 1); ``base`` -> (``base``, None)."""
    head, _, last = tag.rpartition("-")
    if head and last.startswith("g") and last[1:].isdigit():
        return head.replace("-", "+"), int(last[1:])
    return tag.replace("-", "+"), None


def run_key(arm: str, g: int | None, seed: int) -> str:
    """Key of a classifier run in experiment.json: ``gan/g0/3`` or ``base/3``."""
    return f"{arm}/g{g}/{seed}" if g is not None else f"{arm}/{seed}"


def study_jobs(settings: ExperimentSettings, ws: Workspace) -> list[ExecJob]:
    """Every job of a resolved study, each after the jobs it needs.

    ``gan-K`` trains generator K (or checks a reused GAN run); ``data-TAG`` builds an arm's
    training set (after its generator); ``clf-TAG-S`` trains and scores classifier seed S on it;
    ``analysis`` compares the arms and writes the report once every classifier is done.
    """
    arms = list(settings.arms)
    uses_gan = any("gan" in arm for arm in arms)
    n_gen = 1 if gan_is_run(ws, str(settings.gan)) else int(settings.gan_seeds or 1)
    jobs: list[ExecJob] = []
    if uses_gan:
        jobs += [ExecJob(f"gan-{k}", "gan", (), f"train generator {k}") for k in range(n_gen)]
    classifiers: list[str] = []
    for arm in arms:
        for g in range(n_gen) if "gan" in arm else [None]:
            tag = cell_tag(arm, g)
            deps: tuple[str, ...] = ()
            if arm != "base":
                jobs.append(
                    ExecJob(f"data-{tag}", "data", (f"gan-{g}",) if g is not None else (), f"build {tag} set")
                )
                deps = (f"data-{tag}",)
            for s in range(int(settings.seeds or 1)):
                jobs.append(ExecJob(f"clf-{tag}-{s}", "classifier", deps, f"classifier {tag} seed {s}"))
                classifiers.append(f"clf-{tag}-{s}")
    jobs.append(ExecJob("analysis", "analysis", tuple(classifiers), "analysis and report"))
    return jobs
