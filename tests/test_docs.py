"""README and docs/ stay true to the committed outputs: every number they quote from a table is in that table,
measured numbers are never quoted bare, links resolve, and the README stays a front door."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Committed results a page may quote from; a number in a link's text must appear in the linked file.
SOURCES = ("artifacts/", "benchmarks/results/", "logs/")
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
NUMBER = re.compile(r"(?<![A-Za-z_\d.])\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![A-Za-z_\d])")
DECIMAL = re.compile(r"(?<![A-Za-z_\d.-])\d+\.\d+(?:e[-+]?\d+)?(?![A-Za-z_\d])")
# A decimal in prose is a version when a package name comes right before it.
VERSION = re.compile(r"(Python|torch|torchvision|timm|fontTools|numpy|pandas|matplotlib|ONNX|OpenVINO|arXiv)\s+$")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where numbers are code, not claims."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def _links(page: Path) -> list[tuple[str, Path | None]]:
    """(text, resolved target) of each link of ``page``; the target is None for URLs and anchors."""
    found = []
    for text, target in LINK.findall(_prose(page.read_text())):
        path = target.split("#")[0]
        local = path and not re.match(r"[a-z]+:", path)
        found.append((text, (page.parent / path).resolve() if local else None))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    missing = [str(target.relative_to(ROOT)) for _, target in _links(page) if target and not target.exists()]
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_number_linked_to_a_result_is_in_that_result(page):
    stale = []
    for text, target in _links(page):
        if target is None or not target.is_file() or not str(target.relative_to(ROOT)).startswith(SOURCES):
            continue
        source = target.read_text()
        for number in NUMBER.findall(text):
            if not re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", source):
                stale.append(f"{number} ({target.relative_to(ROOT)})")
    assert stale == [], "quoted numbers no longer in the table they cite"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_measured_numbers_are_never_quoted_bare(page):
    """A decimal in prose is a link to the committed table it comes from (or a package version)."""
    prose = LINK.sub(" ", _prose(page.read_text()))
    bare = [m.group() for m in DECIMAL.finditer(prose) if not VERSION.search(prose[: m.start()])]
    assert bare == []


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make repro" in first_screen and "make test" in first_screen and "artifacts/report.html" in first_screen
    linked = {target for _, target in _links(ROOT / "README.md") if target}
    assert {page.resolve() for page in PAGES[1:]} <= linked, "every docs page is reachable from the README"


def test_the_checks_find_a_stale_number(tmp_path, monkeypatch):
    table = tmp_path / "artifacts" / "tables" / "t.md"
    table.parent.mkdir(parents=True)
    table.write_text("| model | top1 |\n| --- | --- |\n| m0 | 74.61 |\n")
    page = tmp_path / "page.md"
    page.write_text("Top-1 [74.61](artifacts/tables/t.md)%, loss 0.7588, [m0](artifacts/tables/t.md).\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    test_a_number_linked_to_a_result_is_in_that_result(page)
    with pytest.raises(AssertionError):
        test_measured_numbers_are_never_quoted_bare(page)
    table.write_text("| model | top1 |\n| --- | --- |\n| m0 | 74.62 |\n")
    with pytest.raises(AssertionError):
        test_a_number_linked_to_a_result_is_in_that_result(page)
