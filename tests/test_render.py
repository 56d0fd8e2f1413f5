"""The offline HTML page of an executed notebook: math as MathML, no scripts or remote resources, checks shown."""

import base64

import nbformat
import pytest

from repnext.render import (
    RenderError,
    check_page,
    extract_math,
    find_chromium,
    page_problems,
    render_notebook_html,
)

# A 1x1 PNG, as a notebook stores a figure.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a3e1b3a70000000049454e44ae426082"
    )
).decode()

MARKDOWN = """# Fusing $W$ and BN

A conv $y = W \\ast x + b$ then BatchNorm:

$$
W' = \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}} W
$$

Code keeps its dollars: `price = "$5"` and see [the paper](https://arxiv.org/abs/2406.16004).

```python
cost = "$1 and $2"
```
"""

CHECKS = "| claim | passed |\n| --- | --- |\n| conv + BN | {} |\n"


def notebook(markdown: str = MARKDOWN, passed: str = "true") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    code = nbformat.v4.new_code_cell("print('$x$')", id="cell-1")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="$x$\n"),
        nbformat.v4.new_output("display_data", data={"text/markdown": CHECKS.format(passed), "text/plain": "t"}),
        nbformat.v4.new_output("display_data", data={"image/png": PIXEL, "text/plain": "<Figure>"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell(markdown, id="intro"), code]
    return nb


@pytest.fixture
def page(tmp_path):
    nbformat.write(notebook(), tmp_path / "executed.ipynb")
    return render_notebook_html(tmp_path / "executed.ipynb", tmp_path / "out" / "page.html")


def test_rendered_page_is_offline_typeset_and_deterministic(page, tmp_path):
    html = page.read_text(encoding="utf-8")
    assert page_problems(html) == []
    assert html.count("<math") == 3 and 'display="block"' in html and "REPNEXTMATH" not in html
    assert "<title>Fusing W and BN</title>" in html and 'src="data:image/png;base64,' in html
    assert "<script" not in html and "mathjax" not in html.lower() and "require.js" not in html
    assert 'href="https://arxiv.org/abs/2406.16004"' in html  # links in prose stay
    assert "$5" in html and "$1 and $2" in html  # code is untouched
    again = render_notebook_html(tmp_path / "executed.ipynb", tmp_path / "again.html")
    assert again.read_bytes() == page.read_bytes()


def test_injected_parameters_are_left_out_and_setup_code_folds(tmp_path):
    nb = notebook()
    tagged = [("parameters", "seed = 0"), ("injected-parameters", "# Parameters\nseed = 1"), ("setup", "import os")]
    cells = [nbformat.v4.new_code_cell(code, id=tag, metadata={"tags": [tag]}) for tag, code in tagged]
    nb.cells = [nb.cells[0], *cells, nb.cells[1]]
    nbformat.write(nb, tmp_path / "executed.ipynb")
    html = render_notebook_html(tmp_path / "executed.ipynb", tmp_path / "page.html").read_text(encoding="utf-8")
    assert "seed = 1" not in html and "# Parameters" not in html
    folds = html.split('<details class="repnext-fold"><summary>show code</summary>')
    assert len(folds) == 3 and "seed" in folds[1].split("</details>")[0] and "os" in folds[2].split("</details>")[0]
    assert "print" not in "".join(fold.split("</details>")[0] for fold in folds[1:])  # other code stays open
    assert page_problems(html) == []


def test_math_in_code_is_left_alone_and_bad_math_names_the_cell():
    found: list[str] = []
    assert extract_math("`$a$` and ``$b$`` and $c$", "nb: cell 0", found) == "`$a$` and ``$b$`` and REPNEXTMATH000000Z"
    assert len(found) == 1 and "<mi>c</mi>" in found[0]
    with pytest.raises(RenderError, match=r"^nb: cell 3, line 2: unmatched '\$'"):
        extract_math("ok $a$\ncosts $5", "nb: cell 3", [])
    with pytest.raises(RenderError, match=r"nb: cell 4: unsupported LaTeX command \\foo in \$\\foo\{x\}\$"):
        extract_math("$\\foo{x}$", "nb: cell 4", [])


def test_render_fails_on_a_failed_check_and_writes_nothing(tmp_path):
    nbformat.write(notebook(passed="false"), tmp_path / "executed.ipynb")
    with pytest.raises(RenderError, match=r"executed.ipynb: check not passed: conv \+ BN \| false"):
        render_notebook_html(tmp_path / "executed.ipynb", tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()
    with pytest.raises(RenderError, match=r"nope.ipynb: cannot read the notebook: FileNotFoundError"):
        render_notebook_html(tmp_path / "nope.ipynb", tmp_path / "page.html")


def test_page_problems_finds_raw_tex_scripts_and_remote_resources():
    html = (
        "<html><head><style>body{background:url(https://x.org/a.png)}</style>"
        '<script src="https://cdn.example/mathjax.js"></script></head><body><main>'
        "<p>raw $x$ here</p><pre>$ok$</pre><img src='//cdn.example/a.png'></main></body></html>"
    )
    problems = page_problems(html)
    assert any(p.startswith("raw TeX left in the text: 'raw $x$ here'") for p in problems)
    assert "no <math> element: the math was not typeset" in problems
    assert "1 <script> element(s): the page must run no script" in problems
    assert "external resource <script src='https://cdn.example/mathjax.js'>" in problems
    assert "external resource <img src='//cdn.example/a.png'>" in problems
    assert "external resource in CSS: url(https://x.org/a.png)" in problems
    assert "no verification table (a table with a 'passed' column)" in problems
    assert page_problems("<html><body><p>x</p></body></html>", False, False) == [
        "the page did not load: no <main> element"
    ]


@pytest.mark.skipif(find_chromium() is None, reason="headless check needs Chromium (Debian package 'chromium')")
def test_page_in_headless_chromium(page, tmp_path):
    assert check_page(page, screenshot=tmp_path / "shot.png", window=(800, 600)) == []
    assert (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><main><p>$x$</p></main></body></html>", encoding="utf-8")
    assert check_page(broken)[:2] == ["raw TeX left in the text: '$x$'", "no <math> element: the math was not typeset"]
