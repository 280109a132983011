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
    ax.set_title("macro AUC per arm: estimate, nested 95% interval, each run")
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


def _p(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _interval(d: dict[str, float]) -> str:
    return f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


def design_paragraph(state: dict[str, Any]) -> str:
    """What was run and what every interval covers, in one paragraph."""
    results, cfg = state["results"], state["config"]
    d = results["design"]
    counts = ", ".join(f"{n} {lb}" for lb, n in d["test_counts"].items())
    gan_arms = [a for a in results["arms"] if "gan" in a]
    gens = (
        f"Each GAN arm used {d['generators']} generator(s) of the same architecture ({cfg['gan']}), each "
        "trained with its own seed and each giving its own synthetic training set; "
        if gan_arms
        else ""
    )
    one_gen = (
        " With a single generator the intervals do not include generator-to-generator variation: a "
        "result holds for this one trained GAN, not for the architecture."
        if gan_arms and d["generators"] < 2
        else ""
    )
    return (
        f"**Design.** {len(results['arms'])} arms ({', '.join(results['arms'])}) were compared on the same "
        f"real test split of `{cfg['data']}` ({d['test_cases']} cases: {counts}). {gens}every training set "
        f"was used to train {d['seeds']} `{cfg['classifier']}` classifiers with different seeds (seed k "
        "of every arm shares its initialisation and data order). The primary endpoint is the macro "
        "ROC-AUC difference of each arm against base; secondary endpoints are per-label AUC, "
        "sensitivity and specificity (argmax decision). Every interval is a "
        f"{d['level']:.0%} percentile interval of a nested bootstrap ({d['n_boot']} resamples) that "
        "resamples generators, then classifier seeds, then test cases within each class (paired: the "
        "same resampled cases and seeds for every arm), so it covers the variation from retraining the "
        "GAN, retraining the classifier and drawing another test set of this size. p-values are "
        f"(b + 1) / (B + 1) bootstrap p-values, shown raw and Holm-adjusted over all {d['family_size']} "
        f"comparisons of the report; MDD is the difference the test would detect with "
        f"{d['power']:.0%} power at this test-set size.{one_gen}"
    )


def conclusion(results: dict[str, Any]) -> list[str]:
    """One plain-language sentence per arm that never claims more than its interval allows."""
    out = []
    for arm, rows in results["vs_base"].items():
        r = rows.get("auc_macro")
        if r is None:
            continue
        span = f"{r['ci_low']:+.3f} to {r['ci_high']:+.3f}"
        if r.get("p_holm", 1.0) < 0.05 and r["ci_low"] > 0:
            out.append(
                f"- **{arm}** raised macro AUC over base by {r['diff']:+.3f} (95% interval {span}); the gain "
                "held when generators, classifier seeds and test cases were resampled."
            )
        elif r.get("p_holm", 1.0) < 0.05 and r["ci_high"] < 0:
            out.append(
                f"- **{arm}** lowered macro AUC against base by {r['diff']:+.3f} (95% interval {span}): it "
                "hurt the classifier in this setting."
            )
        else:
            out.append(
                f"- **{arm}**: no reliable difference from base ({r['diff']:+.3f}; the data are compatible "
                f"with effects from {span}). This test set could detect about ±{r['mdd']:.3f} with 80% "
                "power; smaller effects are not ruled out."
            )
    return out


def write_experiment_report(state: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    results = state["results"]
    cfg = state["config"]
    auc_figure(results, out_dir / "auc_per_arm.png")
    roc_figure(results, out_dir / "roc_per_arm.png")
    lines = ["# cxraug experiment: does augmentation help?", "", design_paragraph(state), ""]
    gan_runs = state.get("gan_runs") or ([state["gan_run"]] if state.get("gan_run") else [])
    lines += [
        f"- dataset: `{cfg['data']}` (test split, real images only)",
        f"- classifier: `{cfg['classifier']}`, {cfg['epochs']} epochs, {cfg['seeds']} seeds per training set",
        f"- GAN runs: {', '.join(f'`{r}`' for r in gan_runs) or 'none'}",
        f"- synthetic images per set: {cfg['synthetic']}, classic images: {cfg['classic']}",
        f"- created {state['created']}, cxraug {state['cxraug_version']}",
    ]
    override = results["design"].get("provenance_override")
    if override:
        lines += ["", f"**Provenance check overridden:** {override}"]
    if cfg.get("quick"):
        lines += [
            "",
            "**--quick run: tiny budgets on small data; numbers show the pipeline works, not a finding.**",
        ]
    rows = [
        {
            "arm": arm,
            "runs": f"{s['generators']} x {s['seeds']}",
            "macro AUC [95% CI]": _ci(s["auc_macro"]),
            "accuracy (mean of runs)": f"{s['accuracy']['mean']:.4f}" if "accuracy" in s else "n/a",
            "balanced acc. (mean of sens.)": _mean_sens(s, results["endpoints"]),
        }
        for arm, s in results["arms"].items()
    ]
    lines += ["", "## Per arm (estimate, nested-bootstrap 95% interval)", ""] + table_md(rows)
    if results["vs_base"]:
        primary = [
            {
                "arm vs base": arm,
                "macro AUC difference [95% CI]": _interval(c["auc_macro"]),
                "p": _p(c["auc_macro"]["p"]),
                "p (Holm)": _p(c["auc_macro"]["p_holm"]),
                "MDD (80% power)": f"±{c['auc_macro']['mdd']:.4f}",
            }
            for arm, c in results["vs_base"].items()
            if "auc_macro" in c
        ]
        lines += ["", "## Primary endpoint: macro ROC-AUC against base", ""] + table_md(primary)
        secondary = [
            {
                "arm": arm,
                "endpoint": ep,
                "difference [95% CI]": _interval(r),
                "p": _p(r["p"]),
                "p (Holm)": _p(r["p_holm"]),
            }
            for arm, c in results["vs_base"].items()
            for ep, r in c.items()
            if ep != "auc_macro"
        ]
        lines += ["", "## Secondary endpoints (same bootstrap, same Holm family)", ""] + table_md(secondary)
        variance = [
            {
                "arm vs base": arm,
                **{
                    f"{level} (share)": f"{v:.2e} ({v / total:.0%})" if total > 0 else f"{v:.2e}"
                    for level, v in comps.items()
                },
            }
            for arm, comps in results.get("variance", {}).items()
            for total in [sum(x for x in comps.values() if x == x)]
        ]
        lines += [
            "",
            "## Where the uncertainty comes from",
            "",
            "Variance of the primary difference when only one level is resampled (the others kept as run).",
            "",
        ] + table_md(variance)
        delong = results.get("delong_per_run", [])
        if delong:
            lines += [
                "",
                "## DeLong test per classifier run (paired with the base run of the same seed)",
                "",
                "Each test is valid for that pair of runs only: it conditions on one generator and one "
                "seed, so the conclusions above do not rest on it.",
                "",
            ] + table_md(
                [
                    {
                        "arm": r["arm"],
                        "generator": r["generator"],
                        "seed": r["seed"],
                        "label": r["label"],
                        "AUC arm": fmt(r["auc_arm"]),
                        "AUC base": fmt(r["auc_base"]),
                        "p (DeLong)": _p(r["p"]),
                    }
                    for r in delong
                ]
            )
    quality = results.get("gan_quality") or {}
    if quality:
        k = results["design"]["generators"]
        which = f", generator 1 of {k}" if k > 1 else ""
        lines += ["", f"## GAN image quality (vs real training images{which})", ""]
        if "skipped" in quality:
            lines.append(f"FID/KID not computed: {quality['skipped']}")
        else:
            values = {key: v for key, v in quality.items() if key != "skipped_features"}
            lines += table_md([{"value": key, "": fmt(v)} for key, v in values.items()])
            for network, reason in (quality.get("skipped_features") or {}).items():
                lines += ["", f"FID/KID on {network} features not computed: {reason}"]
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
    if results["vs_base"]:
        lines += ["", "## Conclusion", ""] + conclusion(results)
    lines += placement_section(state)
    return write_pair("\n".join(lines) + "\n", out_dir, "cxraug experiment")


def placement_section(state: dict[str, Any]) -> list[str]:
    """Where each job of the study ran and how long it took (from the jobs' own records)."""
    jobs = state.get("jobs") or {}
    if not jobs:
        return []
    rows = []
    for job_id, rec in jobs.items():
        where = str(rec.get("host", "?"))
        if rec.get("slurm_job_id"):
            where = f"slurm job {rec['slurm_job_id']} on {rec.get('node', where)}"
            if rec.get("partition"):
                where += f" ({rec['partition']})"
        seconds = rec.get("seconds")
        rows.append(
            {
                "job": job_id,
                "executor": str(rec.get("executor", "?")),
                "where": where,
                "started (UTC)": str(rec.get("started", "")),
                "time": f"{seconds:.1f} s"
                if isinstance(seconds, (int, float))
                else str(rec.get("status", "")),
                "attempts": str(rec.get("attempts", 1)),
            }
        )
    executors = sorted({r["executor"] for r in rows})
    total = sum(float(r.get("seconds") or 0) for r in jobs.values())
    counts = ", ".join(f"{e} ({sum(1 for r in rows if r['executor'] == e)})" for e in executors)
    retried = sum(1 for r in jobs.values() if int(r.get("attempts", 1)) > 1)
    summary = f"{len(rows)} jobs ran under {counts}; {total:.1f} s of job time in all"
    if retried:
        summary += f"; {retried} needed more than one attempt (interrupted, preempted or failed, then rerun)"
    return ["", "## Where the jobs ran", "", summary + ".", ""] + table_md(rows)


def _mean_sens(summary: dict[str, Any], endpoints: list[str]) -> str:
    sens = [summary[e]["mean"] for e in endpoints if e.startswith("sens/")]
    return f"{sum(sens) / len(sens):.4f}" if len(sens) > 1 else "see per-label table"


def summary_table(results: dict[str, Any], name: str) -> Any:
    """The terminal summary: macro ROC-AUC per arm and its difference against base."""
    from rich.table import Table

    table = Table(title=f"experiment {name}: macro ROC-AUC on the real test split (nested 95% intervals)")
    for col in ("arm", "macro AUC [95% CI]", "vs base [95% CI]", "p (Holm)"):
        table.add_column(col)
    for arm, s in results["arms"].items():
        d = results["vs_base"].get(arm, {}).get("auc_macro")
        table.add_row(
            arm,
            _ci(s["auc_macro"]),
            _interval(d) if d else "",
            _p(d["p_holm"]) if d else "",
        )
    return table
