from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxraug.training.plots import progress_gif


def _frame(path: Path, value: int) -> Path:
    rng = np.random.default_rng(value)
    # Noise compresses badly, so half the bytes end well inside the image data.
    pixels = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_progress_gif_skips_a_truncated_frame(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = [_frame(tmp_path / f"step-{k}.png", k) for k in range(3)]
    _truncate(frames[1])
    garbage = tmp_path / "step-9.png"
    garbage.write_bytes(b"not a png")
    out = tmp_path / "progress.gif"

    with caplog.at_level(logging.WARNING, logger="cxraug.training.plots"):
        progress_gif([*frames, garbage], out)

    with Image.open(out) as gif:
        assert getattr(gif, "n_frames", 1) == 2
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 2
    assert str(frames[1]) in skipped[0] and str(garbage) in skipped[1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_progress_gif_writes_nothing_without_readable_frames(tmp_path: Path) -> None:
    frame = _frame(tmp_path / "step-0.png", 0)
    _truncate(frame)
    out = tmp_path / "progress.gif"
    progress_gif([frame], out)
    progress_gif([], out)
    assert not out.exists()


def test_progress_gif_keeps_the_old_gif_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [_frame(tmp_path / f"step-{k}.png", k) for k in range(2)]
    out = tmp_path / "progress.gif"
    progress_gif(frames, out)
    before = out.read_bytes()

    def killed(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"GIF89a half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        progress_gif(frames, out)
    assert out.read_bytes() == before
