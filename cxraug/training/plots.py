"""Loss plots, image grids and the progress animation of a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cxraug.fileio import atomic_write

log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, S, S) in [-1, 1] -> (N, S, S) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8)[:, 0].numpy()


def grid(images: np.ndarray, rows: int) -> Image.Image:
    """(rows * cols, S, S) uint8 -> one grayscale image, row-major, 2 px gaps."""
    n, s, _ = images.shape
    cols = max(1, n // rows)
    gap = 2
    out = np.zeros((rows * (s + gap) - gap, cols * (s + gap) - gap), dtype=np.uint8)
    for k in range(min(n, rows * cols)):
        r, c = divmod(k, cols)
        out[r * (s + gap) : r * (s + gap) + s, c * (s + gap) : c * (s + gap) + s] = images[k]
    return Image.fromarray(out, "L")


def loss_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Every logged loss against kimg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    keys = [k for k in rows[-1] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [r.get("kimg", r.get("step", 0)) for r in rows]
    for key in keys:
        ax.plot(x, [r.get(key, np.nan) for r in rows], label=key, linewidth=1)
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def progress_gif(frames: list[Path], path: Path, duration_ms: int = 400) -> None:
    """An animated GIF of the sample grids over training, skipping frames that cannot be read."""
    images: list[Image.Image] = []
    for frame in frames:
        try:
            with Image.open(frame) as im:
                im.load()  # open() only reads the header; a truncated file fails here, not later
                images.append(im.convert("L"))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            # A sample PNG cut by a killed run must not make every later resume crash; Pillow reports
            # damaged files with any of these depending on where the bytes stop.
            log.warning("progress animation: skipping unreadable frame %s (%s)", frame, exc)
    if not images:
        return
    first, rest = images[0], images[1:]
    atomic_write(
        Path(path),
        lambda fh: first.save(
            fh, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=0
        ),
    )
