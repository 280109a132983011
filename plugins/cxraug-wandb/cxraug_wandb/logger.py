"""The ``wandb`` logger: one W&B run per cxraug run (per model of a per-label GAN run).

Files go under the run folder (``RUN/wandb/``), so an offline run stays with the run it records;
``wandb sync RUN/wandb/offline-run-*`` uploads it later. The W&B run id is kept in
``RUN/wandb-run.json``, so a resumed cxraug run continues the same W&B run (``resume="allow"``).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, ClassVar, Literal

import numpy as np
from cxraug.errors import OptionsError
from cxraug.interfaces import Logger, LoggerRun, PluginOptions
from pydantic import Field

STATE_FILE = "wandb-run.json"
_EXIT_CODES = {"finished": 0, "failed": 1, "interrupted": 130}


class WandbOptions(PluginOptions):
    """Options of the ``wandb`` logger."""

    project: str = Field("cxraug", min_length=1, description="W&B project.")
    entity: str = Field("", description="W&B entity (user or team); empty: your default.")
    mode: Literal["", "online", "offline", "disabled"] = Field(
        "",
        description="online, offline (files only, `wandb sync` later) or disabled; empty: $WANDB_MODE, "
        "else offline (nothing leaves the machine unless asked).",
    )
    group: str = Field("", description="W&B group; empty: the run kind (gan, classifier, experiment).")


class WandbLogger(Logger[WandbOptions]):
    """Scalars, sample grids and the resolved options (as the run config) in Weights & Biases."""

    name: ClassVar[str] = "wandb"
    description: ClassVar[str] = "Weights & Biases runs (files in RUN/wandb; offline unless asked)"
    Options: ClassVar[type[WandbOptions]] = WandbOptions
    requires: ClassVar[tuple[str, ...]] = ("wandb",)
    install_hint: ClassVar[str] = "pip install cxraug-wandb"

    _run: Any = None

    def start(self, run: LoggerRun) -> None:
        import wandb

        o = self.options
        mode = o.mode or os.environ.get("WANDB_MODE") or "offline"
        state_path = run.folder / STATE_FILE
        # W&B run ids are lower-case letters and digits; a new one for each new cxraug stream
        run_id = _recorded_id(state_path) or secrets.token_hex(4)
        try:
            self._run = wandb.init(
                project=o.project,
                entity=o.entity or None,
                group=o.group or run.kind,
                name=run.name,
                id=run_id,
                resume="allow",
                mode=mode,
                dir=str(run.folder),
                # console capture would copy the progress bars into the run; cxraug logs what matters
                settings=wandb.Settings(silent=True, console="off"),
            )
        except wandb.errors.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OptionsError(
                f"--logger wandb ({mode}): {first}; `wandb login`, or --logger-opt wandb.mode=offline"
            ) from None
        state_path.write_text(json.dumps({"id": run_id, "mode": mode}) + "\n", encoding="utf-8")

    def log_params(self, params: dict[str, str | int | float | bool]) -> None:
        # a resume may change some values (a longer budget)
        self._run.config.update(params, allow_val_change=True)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        import wandb

        self._run.log({name: wandb.Image(image)}, step=step)

    def close(self, status: str) -> None:
        if self._run is not None:
            self._run.finish(exit_code=_EXIT_CODES.get(status, 0))
            self._run = None


def _recorded_id(path: Any) -> str | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(state["id"]) if isinstance(state, dict) and state.get("id") else None
