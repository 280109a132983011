"""TensorBoard: event files in the run folder, the format StyleGAN2-ADA users open.

Written with ``torch.utils.tensorboard.SummaryWriter`` (PyTorch's writer of TensorBoard's event
format; it needs the ``tensorboard`` package). Open them with ``tensorboard --logdir RUN`` (or the
workspace's ``runs`` folder to compare runs).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from cxraug import hookimpl
from cxraug.interfaces import Logger, LoggerRun, PluginOptions

TRACKERS_HINT = 'pip install "cxraug[trackers]"'


class TensorBoardOptions(PluginOptions):
    """Options of the ``tensorboard`` logger."""

    subdir: str = Field(
        "tensorboard",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="Folder inside the run folder that holds the event files.",
    )
    flush_secs: int = Field(30, ge=1, le=3600, description="Seconds between writes to disk.")


class TensorBoardLogger(Logger[TensorBoardOptions]):
    """Scalars, sample grids and the resolved options as TensorBoard event files in RUN/tensorboard.

    A resumed run writes to the same folder; the steps it goes back over replace the old ones
    (``purge_step``), as the run's own log does.
    """

    name: ClassVar[str] = "tensorboard"
    description: ClassVar[str] = "TensorBoard event files in RUN/tensorboard (tensorboard --logdir RUN)"
    Options: ClassVar[type[TensorBoardOptions]] = TensorBoardOptions
    requires: ClassVar[tuple[str, ...]] = ("tensorboard",)
    install_hint: ClassVar[str] = TRACKERS_HINT

    _writer: Any = None

    def start(self, run: LoggerRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # After a resume to step N the log drops rows after N; TensorBoard hides events at steps
        # >= purge_step written before, so the curves match the log.
        purge = run.resume_step + 1 if run.resume_step is not None else None
        self._writer = SummaryWriter(
            log_dir=str(run.folder / self.options.subdir),
            purge_step=purge,
            flush_secs=self.options.flush_secs,
        )

    def log_params(self, params: dict[str, str | int | float | bool]) -> None:
        # The text plugin renders Markdown: one table row per option.
        rows = [f"| {key} | {_cell(value)} |" for key, value in params.items()]
        self._writer.add_text("options", "\n".join(["| option | value |", "| --- | --- |", *rows]), 0)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        self._writer.add_image(name, image, step, dataformats="HW" if image.ndim == 2 else "HWC")

    def close(self, status: str) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@hookimpl
def register_loggers(register):
    register(TensorBoardLogger)
