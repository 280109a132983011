"""The experiment report: per-arm tables with CIs, tests against base, AUC and ROC figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cxraug.evaluation.report import fmt, table_md, write_pair


def _ci(d: dict[str, float]) -> str:
    if math.isnan(d["mean"]):
        return "n/a"
    if math.isnan(d["ci_low"]):
        return f"{d['mean']:.4f}"
    return f"{d['mean']:.4f} [{d['ci_low']:.4f}, {d['ci_high']:.4f}]"


def auc_figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results["arms"])
    means = [results["arms"][a]["auc_macro"]["mean"] for a in arms]
    lows = [results["arms"][a]["auc_macro"]["ci_low"] for a in arms]
    highs = [results["arms"][a]["auc_macro"]["ci_high"] for a in arms]
    err = [
        [0 if math.isnan(lo) else m - lo for m, lo in zip(means, lows, strict=True)],
        [0 if math.isnan(hi) else hi - m for m, hi in zip(means, highs, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(arms, means, yerr=err, capsize=6, color=["#888", "#4a90d9", "#d9824a", "#6ab04c"][: len(arms)])
    for k, arm in enumerate(arms):
        vals = results["arms"][arm]["auc_macro"]["values"]
        ax.scatter([k] * len(vals), vals, color="k", s=10, zorder=3)
    ax.set_ylabel("macro ROC-AUC (test)")
    ax.set_ylim(max(0.0, min(means) - 0.15) if means else 0, 1.0)
    ax.set_title("macro AUC per arm: mean, 95% CI over seeds, each seed")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = results["labels"]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.3 * len(labels), 3.3), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        for arm, summary in results["arms"].items():
            curve = summary["roc_curves"].get(label, {})
            if curve.get("fpr"):
                ax.plot(curve["fpr"], curve["tpr"], label=arm, linewidth=1.2)
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set_title(f"{label} (seed-averaged scores)", fontsize=9)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_experiment_report(state: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    results = state["results"]
    cfg = state["config"]
    auc_figure(results, out_dir / "auc_per_arm.png")
    roc_figure(results, out_dir / "roc_per_arm.png")
    lines = ["# cxraug experiment: does augmentation help?", ""]
    lines += [
        f"- dataset: `{cfg['data']}` (test split, real images only)",
        f"- classifier: `{cfg['classifier']}`",
        f"- GAN: `{state.get('gan_run') or 'none'}`",
        f"- seeds per arm: {cfg['seeds']}",
        f"- synthetic images: {cfg['synthetic']}, classic images: {cfg['classic']}",
        f"- created {state['created']}, cxraug {state['cxraug_version']}",
    ]
    if cfg.get("quick"):
        lines += [
            "",
            "**--quick run: tiny budgets on small data; numbers show the pipeline works, not a finding.**",
        ]
    rows = []
    for arm, s in results["arms"].items():
        rows.append(
            {
                "arm": arm,
                "macro AUC [95% CI]": _ci(s["auc_macro"]),
                "accuracy": _ci(s["accuracy"]),
                "balanced acc.": _ci(s["balanced_accuracy"]),
                "F1 macro": _ci(s["f1_macro"]),
            }
        )
    lines += ["", "## Per arm (mean over seeds, 95% t-interval)", ""] + table_md(rows)
    label_rows = []
    for arm, s in results["arms"].items():
        for lb in results["labels"]:
            label_rows.append(
                {
                    "arm": arm,
                    "label": lb,
                    "AUC": _ci(s[f"auc/{lb}"]),
                    "sensitivity": _ci(s[f"sens/{lb}"]),
                    "specificity": _ci(s[f"spec/{lb}"]),
                }
            )
    lines += ["", "## Per label", ""] + table_md(label_rows)
    if results["vs_base"]:
        comp = []
        for arm, c in results["vs_base"].items():
            d = c["macro_auc_diff"]
            comp.append(
                {
                    "arm vs base": arm,
                    "macro AUC difference": fmt(d["diff"]),
                    "95% CI (paired bootstrap)": f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]",
                    "p": fmt(d["p"]),
                }
            )
        lines += ["", "## Against base (paired bootstrap over test cases, seed-averaged)", ""] + table_md(
            comp
        )
        delong = [
            {
                "arm": arm,
                "label": lb,
                "AUC arm": fmt(v["auc_arm"]),
                "AUC base": fmt(v["auc_base"]),
                "z": fmt(v["z"]),
                "p (DeLong)": fmt(v["p"]),
            }
            for arm, c in results["vs_base"].items()
            for lb, v in c["delong"].items()
        ]
        lines += ["", "## DeLong test per label (seed-averaged scores)", ""] + table_md(delong)
    quality = results.get("gan_quality") or {}
    if quality:
        lines += ["", "## GAN image quality (vs real training images)", ""]
        if "skipped" in quality:
            lines.append(f"FID/KID not computed: {quality['skipped']}")
        else:
            lines += table_md([{"value": k, "": fmt(v)} for k, v in quality.items()])
    lines += [
        "",
        "## macro AUC per arm",
        "",
        "![macro AUC per arm](auc_per_arm.png)",
        "",
        "## ROC curves per arm",
        "",
        "![ROC curves per arm](roc_per_arm.png)",
    ]
    return write_pair("\n".join(lines) + "\n", out_dir, "cxraug experiment")


def summary_table(results: dict[str, Any], name: str) -> Any:
    """The terminal summary: macro ROC-AUC per arm and its difference against base."""
    from rich.table import Table

    table = Table(title=f"experiment {name}: macro ROC-AUC on the real test split")
    for col in ("arm", "mean", "95% CI (seeds)", "vs base", "p"):
        table.add_column(col)
    for arm, s in results["arms"].items():
        d = results["vs_base"].get(arm, {}).get("macro_auc_diff")
        table.add_row(
            arm,
            f"{s['auc_macro']['mean']:.4f}",
            f"[{s['auc_macro']['ci_low']:.4f}, {s['auc_macro']['ci_high']:.4f}]",
            f"{d['diff']:+.4f}" if d else "",
            f"{d['p']:.3f}" if d else "",
        )
    return table
