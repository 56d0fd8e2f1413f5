"""An executed notebook as one self-contained, offline HTML page, and a headless-browser check of that page.

:func:`render_notebook_html` converts the math of Markdown cells and Markdown outputs (``$...$`` inline,
``$$...$$`` display, never inside code) to MathML at build time with latex2mathml, which browsers render
natively, then exports the notebook with nbconvert's ``lab`` template stripped of every script (MathJax,
require.js, widgets, mermaid). Images are embedded as data URIs, so the page loads with no network and
is byte-identical for the same notebook. Papermill's injected-parameters cell is left out, and the code of
cells tagged ``parameters`` or ``setup`` folds behind a "show code" ``<details>`` toggle (no JavaScript), so
the page opens with prose. :func:`check_page` opens the page in headless Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from .errors import one_line
from .io import write_text

# nbconvert's lab page without its scripts: math arrives as MathML, and nothing may load from a network.
_TEMPLATE_NAME = "repnext_offline.html.j2"
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block input_group -%}
{%- if cell.metadata.get("tags", []) | select("in", ["parameters", "setup"]) | list -%}
<details class="repnext-fold"><summary>show code</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock input_group -%}
"""

# Markdown pieces in the order they must be recognised: code first, so that a `$` inside code is left alone.
_MARKDOWN = re.compile(
    r"(?P<fence>^[ \t]*(?P<ticks>`{3,}|~{3,})[^\n]*\n.*?^[ \t]*(?P=ticks)[ \t]*$)"
    r"|(?P<code>(?P<run>`+).+?(?<!`)(?P=run)(?!`))"
    r"|\$\$(?P<display>.+?)\$\$"
    r"|\$(?P<inline>[^\s$](?:[^$\n]*?[^\s$\\])?)\$"  # as pandoc: no space just inside the dollars
    r"|(?P<stray>\$)",
    re.MULTILINE | re.DOTALL,
)
_PLACEHOLDER = "REPNEXTMATH{:06d}Z"  # letters and digits only: Markdown leaves it untouched
_PLACEHOLDERS = re.compile(r"REPNEXTMATH(\d{6})Z")
_UNKNOWN_COMMAND = re.compile(r">(\\[A-Za-z]+)<")  # latex2mathml keeps a command it does not know as text
_EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*(?!['\"]?data:)[^)]*\)|@import", re.IGNORECASE)
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class RenderError(ValueError):
    """A notebook that cannot become a valid offline page; the message names the file and cell."""


def latex_to_mathml(tex: str, display: bool, where: str) -> str:
    """MathML for the LaTeX ``tex`` (a ``<math>`` element, ``display="block"`` or ``"inline"``)."""
    from latex2mathml.converter import convert

    try:
        mathml = convert(tex, display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises its own types for malformed input
        raise RenderError(f"{where}: cannot convert ${tex}$: {one_line(error)}") from None
    unknown = _UNKNOWN_COMMAND.search(mathml)
    if unknown:
        raise RenderError(f"{where}: unsupported LaTeX command {unknown.group(1)} in ${tex}$")
    return mathml


def extract_math(markdown: str, where: str, mathml: list[str]) -> str:
    """Replace each ``$...$`` / ``$$...$$`` outside code by a placeholder and append its MathML to ``mathml``."""

    def replace(match: re.Match) -> str:
        if match.group("fence") or match.group("code"):
            return match.group()
        if match.group("stray"):
            line = markdown.count("\n", 0, match.start()) + 1
            raise RenderError(f"{where}, line {line}: unmatched '$' (math is $...$ or $$...$$; no literal dollars)")
        display = match.group("display") is not None
        mathml.append(latex_to_mathml((match.group("display") or match.group("inline")).strip(), display, where))
        return _PLACEHOLDER.format(len(mathml) - 1)

    return _MARKDOWN.sub(replace, markdown)


def _insert_math(html: str, mathml: list[str], where: str) -> str:
    # a heading with math gets an id (and anchor link) made from its text: keep attributes plain
    html = re.sub(r'\s(?:id|href)="[^"]*"', lambda m: _PLACEHOLDERS.sub("math", m.group()), html)
    found = {int(index) for index in _PLACEHOLDERS.findall(html)}
    missing = sorted(set(range(len(mathml))) - found)
    if missing:
        raise RenderError(f"{where}: math {missing[0]} was lost by the Markdown renderer")
    return _PLACEHOLDERS.sub(lambda m: mathml[int(m.group(1))], html)


def _title(cells: list, default: str) -> str:
    for cell in cells:
        if cell.cell_type == "markdown":
            heading = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if heading:
                return re.sub(r"[$`*_]", "", heading.group(1)).strip()
    return default


def render_notebook_html(executed_ipynb: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """Render ``executed_ipynb`` as a self-contained offline page at ``html_path`` (written atomically).

    Raises :class:`RenderError` naming the cell for math that cannot be converted, and naming the problem
    when the page would still hold raw TeX, a script or an external resource, or show a failed check.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    source = Path(executed_ipynb)
    try:
        nb = nbformat.read(source, as_version=4)
    except (OSError, ValueError) as error:  # missing file, or not a notebook (nbformat's errors are ValueErrors)
        raise RenderError(f"{source}: cannot read the notebook: {one_line(error)}") from None
    title = nb.metadata.get("title") or _title(nb.cells, source.stem)
    mathml: list[str] = []
    for index, cell in enumerate(nb.cells):
        where = f"{source}: cell {index} ({cell.get('id', 'no id')})"
        if cell.cell_type == "markdown":
            cell.source = extract_math(cell.source, where, mathml)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/markdown" in data:
                data["text/markdown"] = extract_math(data["text/markdown"], f"{where} output", mathml)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
        template_file=_TEMPLATE_NAME,
        embed_images=True,
    )
    # papermill's copy of the parameters repeats the parameters cell; the executed notebook keeps it
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"injected-parameters"}), enabled=True)
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    html = _insert_math(html, mathml, str(source))
    problems = page_problems(html, expect_math=bool(mathml), expect_checks=False)
    if problems:
        raise RenderError(f"{source}: {problems[0]}")
    write_text(html_path, html)
    return Path(html_path)


class _Page(HTMLParser):
    """What the checks need from a page: visible text, math, scripts, external resources and tables."""

    _HIDDEN = frozenset({"script", "style", "code", "pre", "math", "title", "textarea"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hidden, self.text, self.styles = [], [], []
        self.math = self.scripts = 0
        self.main = False
        self.external: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.math += tag == "math"
        self.scripts += tag == "script"
        self.main = self.main or tag == "main"
        for name in ("src", "srcset", "data", "poster") + (("href",) if tag == "link" else ()):
            if values.get(name) and _EXTERNAL.match(values[name]):
                self.external.append(f"<{tag} {name}={values[name]!r}>")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables and self.tables[-1]:
            self._cell = []
        if tag in self._HIDDEN:
            self.hidden.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag in self.hidden:
            del self.hidden[len(self.hidden) - 1 - self.hidden[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if self.hidden and self.hidden[-1] == "style":
            self.styles.append(data)
        if not self.hidden:
            self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def page_problems(html: str, expect_math: bool = True, expect_checks: bool = True) -> list[str]:
    """Problems of a rendered page (empty when it is fine), from its HTML or from a browser's DOM.

    Always: raw TeX (any ``$``) in the visible text outside code, a script, or a resource loaded from
    elsewhere (links in prose are fine), and a row of a verification table (a table with a ``passed``
    column) that is not ``true``. With ``expect_math``: no ``<math>`` element; with ``expect_checks``:
    no verification table.
    """
    page = _Page()
    page.feed(html)
    page.close()
    problems = []
    if not page.main:
        problems.append("the page did not load: no <main> element")
    text = " ".join("".join(page.text).split())
    if "$" in text:
        at = text.index("$")
        problems.append(f"raw TeX left in the text: {text[max(0, at - 40) : at + 40]!r}")
    if expect_math and not page.math:
        problems.append("no <math> element: the math was not typeset")
    if page.scripts:
        problems.append(f"{page.scripts} <script> element(s): the page must run no script")
    problems += [f"external resource {item}" for item in page.external]
    problems += [f"external resource in CSS: {m.group()}" for m in _CSS_URL.finditer("".join(page.styles))]
    checks = [table for table in page.tables if table and "passed" in table[0]]
    if expect_checks and not checks:
        problems.append("no verification table (a table with a 'passed' column)")
    for table in checks:
        column = table[0].index("passed")
        problems += [
            f"check not passed: {' | '.join(row)}" for row in table[1:] if row[column : column + 1] != ["true"]
        ]
    return problems


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable, or ``None`` when none is installed."""
    return next((path for path in map(shutil.which, _CHROMIUM_NAMES) if path), None)


def check_page(html_path: str | os.PathLike, screenshot: str | os.PathLike | None = None,
               window: tuple[int, int] = (1280, 4000), chromium: str | None = None,
               timeout: float = 120, expect_math: bool = True,
               expect_checks: bool = True) -> list[str]:  # fmt: skip
    """Open ``html_path`` in headless Chromium, offline, and return the problems of the loaded page.

    The DOM after loading must pass :func:`page_problems` (math typeset as ``<math>``, no raw ``$``,
    every verification row ``true``; ``expect_math`` and ``expect_checks`` as there). Host names resolve
    nowhere, so a page that needs the network fails. ``screenshot`` saves a PNG of the top ``window``
    pixels (width, height). Raises ``FileNotFoundError`` when no Chromium is installed.
    """
    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium found (tried " + ", ".join(_CHROMIUM_NAMES) + ")")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="repnext-chromium-") as profile:
        base = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND"]  # fmt: skip
        if screenshot is not None:
            target = Path(screenshot).resolve()
            target.parent.mkdir(parents=True, exist_ok=True)
            base += ["--hide-scrollbars", f"--window-size={window[0]},{window[1]}", f"--screenshot={target}"]
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    if dom.returncode != 0 or not dom.stdout.strip():
        return [f"chromium could not load {url} (exit {dom.returncode}): {dom.stderr.strip()[-300:]}"]
    problems = page_problems(dom.stdout, expect_math=expect_math, expect_checks=expect_checks)
    if screenshot is not None and not target.is_file():
        problems.append(f"chromium wrote no screenshot to {target}")
    return problems
