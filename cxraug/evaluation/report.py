"""Reports people can read: report.md beside its figures, and a self-contained report.html."""

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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _value_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(metric, key, _fmt(v)) for metric, values in doc["values"].items() for key, v in values.items()]


def _figures(doc: dict[str, Any]) -> list[tuple[str, str]]:
    figs = []
    for key, rel in doc["artifacts"].items():
        if not str(rel).endswith(".png"):
            continue
        title = FIGURE_TITLES.get(key) or (
            "GAN losses: " + key.split(".", 1)[1] if key.startswith("gan_losses") else key
        )
        figs.append((title, rel))
    return figs


def _table_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out


def write_reports(doc: dict[str, Any], out_dir: Path, title: str = "cxraug evaluation") -> tuple[Path, Path]:
    """Write report.md and report.html into ``out_dir``; returns their paths."""
    src = doc["sources"]
    lines = [f"# {title}", "", f"created {doc['created']} with cxraug {doc['cxraug_version']}", ""]
    lines += [f"- {k.replace('_', ' ')}: `{v}`" for k, v in src.items()]
    lines += ["", "## Values", "", "| metric | value | |", "|---|---|---|"]
    lines += [f"| {m} | {k} | {v} |" for m, k, v in _value_rows(doc)]
    for name, rows in doc.get("tables", {}).items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            lines += ["", f"## {name}", ""] + _table_md(rows)
    for title_fig, rel in _figures(doc):
        lines += ["", f"## {title_fig}", "", f"![{title_fig}]({rel})"]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%;image-rendering:pixelated;border:1px solid #eee}code{background:#f4f4f4}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1><p>created {html.escape(doc['created'])} with cxraug "
        f"{html.escape(doc['cxraug_version'])}</p><ul>",
    ]
    parts += [
        f"<li>{html.escape(k.replace('_', ' '))}: <code>{html.escape(str(v))}</code></li>"
        for k, v in src.items()
    ]
    parts.append("</ul><h2>Values</h2><table><tr><th>metric</th><th>value</th><th></th></tr>")
    parts += [
        f"<tr><td>{html.escape(m)}</td><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
        for m, k, v in _value_rows(doc)
    ]
    parts.append("</table>")
    for name, rows in doc.get("tables", {}).items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            cols = list(rows[0])
            parts.append(
                f"<h2>{html.escape(name)}</h2><table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
                + "</tr>"
            )
            parts += [
                "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                for r in rows
            ]
            parts.append("</table>")
    for title_fig, rel in _figures(doc):
        path = out_dir / rel
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(
                f"<h2>{html.escape(title_fig)}</h2><img alt='{html.escape(title_fig)}' "
                f"src='data:image/png;base64,{data}'>"
            )
    parts.append(
        f"<details><summary>metrics.json</summary><pre>{html.escape(json.dumps(doc, indent=2))}</pre>"
        "</details></body></html>"
    )
    html_path = out_dir / "report.html"
    html_path.write_text("\n".join(parts), encoding="utf-8")
    return md_path, html_path
