"""Reports people can read: report.md beside its figures, and a self-contained report.html.

Reports are written once as Markdown; the HTML version is rendered from it with the figures
embedded (base64), so the two never disagree and the HTML file can be mailed on its own.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

FIGURE_TITLES = {
    "roc.roc": "ROC curves (one-vs-rest, test split)",
    "roc.confusion": "Confusion matrix",
    "samples": "Real (upper row) vs generated (lower row) images per label",
    "memorization.pairs": "Closest (generated, training) pairs: look for copies",
}
_STYLE = (
    "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "img{max-width:100%;image-rendering:pixelated;border:1px solid #eee}code{background:#f4f4f4}"
)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table_md(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table from dict rows (columns from the first row)."""
    if not rows:
        return []
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out


def _renderer() -> Any:
    """CommonMark with tables (markdown-it-py); raw HTML in the text is escaped, never passed on."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _embedded(src: str, base: Path) -> str | None:
    """A figure beside the report as a data: URI, so report.html stands alone; None if it is not
    a PNG inside ``base`` (links out of the report folder are not followed)."""
    if "://" in src or src.startswith("data:"):
        return None
    path = (base / src).resolve()
    try:
        path.relative_to(base.resolve())
    except ValueError:
        return None
    if path.suffix.lower() != ".png" or not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """The report's Markdown as one HTML page, its PNG figures embedded (missing ones left out)."""
    md = _renderer()
    tokens = md.parse(markdown)
    for token in tokens:
        if token.type != "inline" or not token.children:
            continue
        kept = []
        for child in token.children:
            if child.type == "image":
                data = _embedded(str(child.attrGet("src") or ""), base)
                if data is None:
                    continue
                child.attrSet("src", data)
            kept.append(child)
        token.children = kept
    body = md.renderer.render(tokens, md.options, {})
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>\n{body}</body></html>"
    )


def write_pair(markdown: str, out_dir: Path, title: str, extra_html: str = "") -> tuple[Path, Path]:
    """report.md and the self-contained report.html rendered from it."""
    md_path = out_dir / "report.md"
    md_path.write_text(markdown, encoding="utf-8")
    page = markdown_to_html(markdown, out_dir, title)
    if extra_html:
        page = page.replace("</body></html>", extra_html + "</body></html>")
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


def _figures(doc: dict[str, Any]) -> list[tuple[str, str]]:
    figs = []
    for key, rel in doc["artifacts"].items():
        if not str(rel).endswith(".png"):
            continue
        if key in FIGURE_TITLES:
            title = FIGURE_TITLES[key]
        elif key.startswith("gan_losses"):
            title = "GAN losses: " + key.split(".", 1)[1]
        else:
            title = key
        figs.append((title, rel))
    return figs


NETWORK_TITLES = {
    "inception": "Inception (clean-fid)",
    "xrv": "TorchXRayVision DenseNet-121",
}


def by_network(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (metric, value name, one column per feature network) of metrics computed on several
    networks, so Inception and X-ray distances stand side by side; [] when only one was used."""
    networks = doc.get("feature_networks", {})
    if len(set(networks.values())) < 2:
        return []
    order = [n for n in NETWORK_TITLES if n in networks.values()]
    nets_of: dict[str, set[str]] = {}
    for entry, net in networks.items():
        nets_of.setdefault(entry.split("@", 1)[0], set()).add(net)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for entry, net in networks.items():
        metric = entry.split("@", 1)[0]
        if len(nets_of[metric]) < 2:  # e.g. memorization in Inception space only
            continue
        for name, value in doc["values"].get(entry, {}).items():
            row = rows.setdefault(
                (metric, name), {"metric": metric, "name": name, **dict.fromkeys(order, "")}
            )
            row[net] = value
    return [
        {k if k not in NETWORK_TITLES else NETWORK_TITLES[k]: v for k, v in r.items()} for r in rows.values()
    ]


def write_reports(doc: dict[str, Any], out_dir: Path, title: str = "cxraug evaluation") -> tuple[Path, Path]:
    """The evaluation report (values, tables, figures) as report.md and report.html."""
    lines = [f"# {title}", "", f"created {doc['created']} with cxraug {doc['cxraug_version']}", ""]
    lines += [f"- {k.replace('_', ' ')}: `{v}`" for k, v in doc["sources"].items()]
    if doc.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in doc["warnings"]]
    lines += ["", "## Values", "", "| metric | name | value |", "|---|---|---|"]
    lines += [f"| {m} | {k} | {fmt(v)} |" for m, values in doc["values"].items() for k, v in values.items()]
    if doc.get("feature_networks"):
        lines += [
            "",
            "Feature networks: "
            + ", ".join(
                f"`{entry}` on {NETWORK_TITLES.get(net, net)}"
                for entry, net in doc["feature_networks"].items()
            ),
        ]
    side = by_network(doc)
    if side:
        lines += ["", "## By feature network", ""] + table_md(side)
    for name, rows in doc.get("tables", {}).items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            lines += ["", f"## {name}", ""] + table_md(rows)
    for title_fig, rel in _figures(doc):
        lines += ["", f"## {title_fig}", "", f"![{title_fig}]({rel})"]
    raw = (
        f"<details><summary>metrics.json</summary><pre>{html.escape(json.dumps(doc, indent=2))}</pre>"
        "</details>"
    )
    return write_pair("\n".join(lines) + "\n", out_dir, title, raw)
