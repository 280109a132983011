"""report.html is rendered from report.md by markdown-it-py: CommonMark + tables, figures embedded."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cxraug.evaluation.report import markdown_to_html, write_pair


def test_tables_lists_code_and_figures_render(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 128).save(tmp_path / "roc.png")
    md = (
        "# FID `clean`\n\n- **FID** 73.5\n- KID 0.02\n\n"
        "| arm | AUC |\n|---|---|\n| base | 0.90 |\n\n![ROC](roc.png)\n"
    )
    page = markdown_to_html(md, tmp_path, "report")
    assert "<h1>FID <code>clean</code></h1>" in page
    assert "<li><strong>FID</strong> 73.5</li>" in page
    assert "<th>arm</th>" in page and "<td>0.90</td>" in page
    assert 'src="data:image/png;base64,' in page and 'alt="ROC"' in page


def test_text_from_the_data_is_escaped_not_run(tmp_path: Path) -> None:
    """Dataset and label names reach the report; raw HTML in them must stay text."""
    md = "# <script>alert(1)</script>\n\n| label |\n|---|\n| <img src=x onerror=alert(1)> |\n"
    page = markdown_to_html(md, tmp_path, "<b>t</b>")
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page and "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page


def test_missing_figures_and_links_out_of_the_folder_are_left_out(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Image.new("L", (2, 2)).save(outside)
    report = tmp_path / "report"
    report.mkdir()
    page = markdown_to_html("![a](missing.png)\n\n![b](../secret.png)\n\ntext\n", report, "r")
    assert "<img" not in page and "<p>text</p>" in page


def test_write_pair_keeps_markdown_and_html_together(tmp_path: Path) -> None:
    md_path, html_path = write_pair("# Report\n\nbody\n", tmp_path, "r", extra_html="<p>extra</p>")
    assert md_path.read_text() == "# Report\n\nbody\n"
    page = html_path.read_text()
    assert "<h1>Report</h1>" in page and page.endswith("<p>extra</p></body></html>")
