"""Which prepared dataset a command uses: the one named, the latest, or the embedded demo."""

from __future__ import annotations

import json
import logging

from cxraug.data.prepare import PrepareSettings, Source, prepare_dataset
from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError
from cxraug.registry import Registry
from cxraug.ui import console
from cxraug.workspace import DEMO_DATASET, Workspace

log = logging.getLogger(__name__)

#: The demo is small so that a bare `cxraug train-gan ...` finishes in minutes on a laptop CPU.
DEMO_SIZE = 64


def prepare_demo(workspace: Workspace, registry: Registry) -> PreparedDataset:
    """Prepare the demo dataset from the registry's demo adapter (offline, deterministic, no root)."""
    cls = registry.demo_dataset()
    adapter = cls(cls.Options())
    result = prepare_dataset(
        workspace, [Source(adapter, None)], PrepareSettings(name=DEMO_DATASET, size=DEMO_SIZE)
    )
    return result.dataset


def latest_real_dataset(workspace: Workspace) -> str | None:
    """The newest prepared dataset that is not an ``augment`` product (no synthetic training rows)."""
    for name in reversed(workspace.dataset_names()):
        try:
            info = json.loads((workspace.dataset_dir(name) / "info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and not info.get("augmented_from"):
            return name
    return None


def open_dataset(
    workspace: Workspace, registry: Registry, name: str | None, *, real: bool = False
) -> PreparedDataset:
    """``name``, else the most recently prepared dataset, else the demo (prepared now, said so).

    With ``real`` the default skips datasets made by ``augment``: a GAN, a study's base arm or a
    new augmentation must start from real images, not from earlier synthetic ones.
    """
    if name is not None:
        path = workspace.dataset_dir(name)
        if not path.is_dir():
            known = ", ".join(workspace.dataset_names()) or "none yet"
            raise DataError(
                f"no prepared dataset {name!r} in {workspace.data_dir} (prepared: {known}); "
                "create it with `cxraug data prepare ADAPTER --root PATH --name NAME`"
            )
        return PreparedDataset(path)
    latest = latest_real_dataset(workspace) if real else workspace.latest_dataset()
    if latest is not None:
        if real and latest != workspace.latest_dataset():
            console.print(
                f"using {latest!r}, the latest dataset of real images (newer ones were made by "
                "`augment`; pass --data to choose)",
                soft_wrap=True,
            )
        return PreparedDataset(workspace.dataset_dir(latest))
    demo = registry.demo_dataset()
    what = "synthetic images, NOT real X-rays" if demo.synthetic else "a small sample, not a study"
    console.print(
        f"[yellow]No prepared dataset in {workspace.root}: preparing the demo dataset "
        f"{DEMO_DATASET!r} with the {demo.name!r} adapter ({what}).[/] Use "
        "`cxraug data prepare ADAPTER --root PATH` for real data."
    )
    return prepare_demo(workspace, registry)
