"""Rerun the committed reference study (docs/results/pneumoniamnist/) on the real PneumoniaMNIST.

    python benchmarks/reference_pneumoniamnist.py [--npz ../shared/data/pneumoniamnist.npz]
        [--workspace ./reference-workspace] [--copy-to docs/results/pneumoniamnist]

Prepares the official MedMNIST v2 file at 32 px (the GANs need a power of two), then runs the
full study: base, classic, gan and classic+gan arms, 3 conditional generators (AC-GAN) x 5
classifier seeds per training set. Resumable: run it again after an interruption and it continues.
Prints the wall time of each step; with --copy-to, copies report.md and its figures there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENT = [
    "experiment",
    "--data",
    "pneumoniamnist32",
    "--gan",
    "acgan",
    "--gan-seeds",
    "3",
    "--gan-kimg",
    "25",
    "--classifier",
    "cnn",
    "--opt",
    "classifier.input_size=32",
    "--no-pretrained",
    "--seeds",
    "5",
    "--epochs",
    "5",
    "--synthetic",
    "2000",
    "--classic",
    "2000",
    "--device",
    "cpu",
]


def cxraug(workspace: Path, *args: str) -> float:
    """Run one cxraug command in the workspace; returns its wall time in seconds."""
    t0 = time.perf_counter()
    print(f"$ CXRAUG_WORKSPACE={workspace} cxraug {' '.join(args)}", flush=True)
    env = {**os.environ, "CXRAUG_WORKSPACE": str(workspace)}
    subprocess.run([sys.executable, "-m", "cxraug", *args], check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--npz", type=Path, default=Path("../shared/data/pneumoniamnist.npz"))
    parser.add_argument("--workspace", type=Path, default=Path("reference-workspace"))
    parser.add_argument("--copy-to", type=Path, default=None)
    args = parser.parse_args()
    ws = args.workspace.resolve()
    out = ws / "reports" / "reference"
    times = {}
    if not (ws / "data" / "pneumoniamnist32" / "info.json").is_file():
        times["prepare"] = cxraug(
            ws,
            "data",
            "prepare",
            "medmnist",
            "--root",
            str(args.npz),
            "--size",
            "32",
            "--name",
            "pneumoniamnist32",
        )
    times["experiment"] = cxraug(ws, *EXPERIMENT, "--out", str(out))
    # the analysis and report of the current cxraug from the stored predictions (no training)
    times["analysis"] = cxraug(ws, "experiment", "--out", str(out), "--reanalyse")
    for step, seconds in times.items():
        print(f"wall time {step}: {seconds / 60:.1f} min")
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "auc_per_arm.png", "roc_per_arm.png"):
            shutil.copyfile(out / name, args.copy_to / name)
        print(f"copied the report to {args.copy_to}")


if __name__ == "__main__":
    main()
