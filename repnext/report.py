"""One offline HTML page showing every figure and table the DVC pipeline makes, with their provenance.

:func:`collect_report` reads the pipeline as DVC resolves it (``dvc.yaml``, ``foreach`` items included), the
``params.yaml`` section each stage reads and the hashes ``dvc.lock`` records for its outputs, and compares each
recorded hash with the file in the workspace (DVC's md5; for a folder DVC's ``.dir`` hash), so a reader sees
what was built from what and what was edited since. :func:`render_report` writes the page: one section per
stage (its ``desc``, its parameters, its outputs with their hashes), CSV tables as HTML tables, metrics as
key/value tables, PNG and SVG figures shown through relative ``<img>`` links (embedding them made an 8 MB page
that changed with every figure), other files (PDF, LaTeX, notebooks, logs) linked relatively: the page works
offline from its place in the repository. Files named ``latency*`` hold time measurements, which differ between
runs: their tables are linked, not copied in, so the page stays byte-identical across reruns.
dvc.lock is read as it is; a stage it lacks or records differently is reported, never an error.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import html
import io
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .io import write_text

FIGURE_TYPES = frozenset({".png", ".svg"})  # shown as images; the other formats are linked
_SHOWN_FIRST = (".png", ".svg", ".csv", ".json")  # how a group of files with one stem is shown, in preference
_RELATIVE_LINK = re.compile(r'\s(?:src|href)="(?!data:|#)([^"]+)"')


class ReportError(ValueError):
    """A pipeline description that cannot be reported; the message names the file."""


@dataclass
class Output:
    """One ``outs``/``metrics`` entry of a stage: its path, what dvc.lock records and what the workspace holds."""

    path: str
    cached: bool  # True: kept in DVC's cache (not in git); its files are not listed
    metric: bool = False
    locked_md5: str | None = None  # None: dvc.lock has no entry for it
    workspace_md5: str | None = None  # None: missing from the workspace
    files: list[str] = field(default_factory=list)  # repository-relative files under it, sorted
    machine: str | None = None  # why its bytes depend on the CPU (repnext/data/machine_dependent.csv), or None

    @property
    def state(self) -> str:
        """``matches dvc.lock``, ``differs from dvc.lock`` (``..., machine-dependent`` for an output whose bytes
        depend on the CPU), ``not in dvc.lock``, ``missing``, or in DVC's cache."""
        if self.cached:
            return "in DVC's cache (not in git)"
        if self.workspace_md5 is None:
            return "missing"
        if self.locked_md5 is None:
            return "not in dvc.lock"
        if self.locked_md5 == self.workspace_md5:
            return "matches dvc.lock"
        return MACHINE_STATE if self.machine else "differs from dvc.lock"


@dataclass
class StageReport:
    """What the page shows of one stage (``name`` as DVC addresses it, e.g. ``feature_maps@recnext_m0``)."""

    name: str
    desc: str
    params: dict[str, object]  # dotted section -> its value in params.yaml
    locked_params: dict[str, object] | None  # dotted section -> the value dvc.lock recorded; None: not in dvc.lock
    outputs: list[Output]

    @property
    def params_changed(self) -> list[str]:
        """Sections whose params.yaml value differs from what dvc.lock recorded (the stage has not rerun since)."""
        if self.locked_params is None:
            return []
        return [key for key, value in self.params.items() if self.locked_params.get(key) != value]


def file_md5(path: str | os.PathLike) -> str:
    """The md5 DVC records for a file (of its bytes, hex)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dir_md5(path: str | os.PathLike) -> str:
    """The hash DVC records for a folder: md5 of the JSON list of ``{md5, relpath}`` sorted by path, plus ``.dir``."""
    root = Path(path)
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(root).as_posix()} for p in root.rglob("*") if p.is_file()]
    listing = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"


def _section(params: Mapping, dotted: str, where: str) -> object:
    value: object = params
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise ReportError(f"{where}: no section {dotted!r}")
        value = value[key]
    return value


def _locked_outputs(entry: Mapping) -> dict[str, str | None]:
    return {out["path"]: out.get("md5") for out in entry.get("outs", []) if isinstance(out, Mapping)}


def _workspace(root: Path, output: Output) -> None:
    """Hash and list a git-tracked output; a cached one (dataset, checkpoints) is left alone: not a dependency."""
    target = root / output.path
    if output.cached:
        return
    if target.is_file():
        output.workspace_md5 = file_md5(target)
        output.files = [output.path]
    elif target.is_dir():
        output.workspace_md5 = dir_md5(target)
        output.files = sorted(p.relative_to(root).as_posix() for p in target.rglob("*") if p.is_file())


# A check stage only validates the params.yaml section of the stage it guards; the page shows that stage.
CHECK_PREFIX = "check_"
MACHINE_DEPENDENT = Path(__file__).parent / "data" / "machine_dependent.csv"
MACHINE_STATE = "differs from dvc.lock, machine-dependent"


def machine_dependent_patterns() -> list[tuple[str, str]]:
    """``(pattern, reason)`` for each output whose bytes depend on the CPU, from :data:`MACHINE_DEPENDENT`."""
    with open(MACHINE_DEPENDENT, newline="", encoding="utf-8") as handle:
        return [(row["pattern"], row["reason"]) for row in csv.DictReader(handle)]


def machine_dependence(path: str, patterns: Iterable[tuple[str, str]]) -> str | None:
    """Why the bytes of output ``path`` depend on the CPU (the reason of the first of ``patterns`` that matches
    it), or ``None`` for an output every CPU writes the same."""
    return next((reason for pattern, reason in patterns if fnmatch.fnmatchcase(path, pattern)), None)


def collect_report(root: str | os.PathLike = ".", skip: Iterable[str] = ("report",)) -> list[StageReport]:
    """Every stage of the DVC project at ``root`` in dvc.yaml's order (except ``skip``), with its provenance.

    Parameters come from the params file each stage names; hashes from ``dvc.lock`` as it is (an absent or
    partial lock is fine). Raises :class:`ReportError` naming the file when dvc.yaml or dvc.lock cannot be read.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root).resolve()
    lock_path = root / "dvc.lock"
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) if lock_path.exists() else {}
    except yaml.YAMLError as error:
        raise ReportError(f"{lock_path.name}: not YAML: {error}") from None
    locked = (lock or {}).get("stages", {}) if isinstance(lock, Mapping) else {}
    try:
        with Repo(os.fspath(root)) as repo:
            stages = list(repo.index.stages)
    except DvcException as error:
        raise ReportError(f"dvc.yaml: {error}") from None
    params_files: dict[str, dict] = {}
    reports, patterns = [], machine_dependent_patterns()
    for stage in stages:
        name = stage.name  # as dvc.lock keys it, e.g. feature_maps@recnext_m0
        if name in skip or name.split("@")[0] in skip or name.startswith(CHECK_PREFIX):
            continue
        params: dict[str, object] = {}
        locked_params: dict[str, object] = {}
        entry = locked.get(name)
        for dep in stage.params:
            file = dep.def_path
            if file not in params_files:
                params_files[file] = yaml.safe_load((root / file).read_text(encoding="utf-8")) or {}
            for key in dep.params:
                params[key] = _section(params_files[file], key, file)
                if entry:
                    locked_value = entry.get("params", {}).get(file, {}).get(key)
                    locked_params[key] = locked_value
        recorded = _locked_outputs(entry or {})
        metrics = {out.def_path for out in stage.outs if out.metric}
        outputs = []
        for out in stage.outs:
            output = Output(out.def_path, cached=bool(out.use_cache), metric=out.def_path in metrics,
                            machine=machine_dependence(out.def_path, patterns))  # fmt: skip
            output.locked_md5 = recorded.get(out.def_path)
            _workspace(root, output)
            outputs.append(output)
        reports.append(StageReport(name, stage.desc or "", params, locked_params if entry else None, outputs))
    return reports


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _anchor(name: str) -> str:
    return "stage-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _relative(path: str, base: Path) -> str:
    """``path`` (relative to the working directory, as DVC names outputs) as a link from the folder ``base``."""
    return Path(os.path.relpath(Path(path).resolve(), base)).as_posix()


def _link(path: str, base: Path) -> str:
    return f'<a href="{_escape(_relative(path, base))}">{_escape(posixpath.basename(path))}</a>'


def csv_table_html(text: str) -> str:
    """An HTML ``<table>`` of CSV ``text`` (first row the header)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return "<p>(empty table)</p>"
    head = "".join(f"<th>{_escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in row) + "</tr>\n" for row in rows[1:])
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>'


def _flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, Mapping):
        return [item for key, sub in value.items() for item in _flatten(sub, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), json.dumps(value) if isinstance(value, list | dict) else value)]


def metrics_table_html(text: str, where: str) -> str:
    """A two-column HTML table (key, value) of a JSON metrics file, nested keys dotted."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(f"{where}: not JSON: {error}") from None
    rows = "".join(f"<tr><td>{_escape(k)}</td><td>{_escape(v)}</td></tr>\n" for k, v in _flatten(data))
    head = "<thead><tr><th>key</th><th>value</th></tr></thead>"
    return f'<div class="scroll"><table>\n{head}\n<tbody>\n{rows}</tbody></table></div>'


def is_time_measurement(path: str) -> bool:
    """Files named ``latency*`` hold times, which differ between runs: linked from the page, never embedded."""
    return posixpath.basename(path).startswith("latency")


def _groups(files: Iterable[str]) -> dict[str, list[str]]:
    """Files grouped by path without suffix (``figures/erf/mixers`` -> its .png and .pdf), in path order."""
    groups: dict[str, list[str]] = {}
    for path in sorted(files):
        groups.setdefault(posixpath.splitext(path)[0], []).append(path)
    return groups


def _show_file(root: Path, path: str, siblings: list[str], base: Path) -> str:
    """The HTML for one group of files with one stem: the shown file (embedded) and links to every format."""
    suffixes = {posixpath.splitext(p)[1]: p for p in siblings}
    shown = next((suffixes[s] for s in _SHOWN_FIRST if s in suffixes), None)
    links = " · ".join(_link(str(root / p), base) for p in siblings)
    caption = f'<p class="file"><code>{_escape(path)}</code> {links}</p>'
    if shown is None:
        return caption
    suffix = posixpath.splitext(shown)[1]
    if suffix in FIGURE_TYPES:
        note = '<p class="note">A time measurement: different in every run.</p>' if is_time_measurement(shown) else ""
        image = f'<img src="{_escape(_relative(str(root / shown), base))}" alt="{_escape(shown)}">'
        return f"<figure>{image}{note}<figcaption>{caption}</figcaption></figure>"
    if is_time_measurement(shown):
        return caption + '<p class="note">A time measurement, different in every run: open the file.</p>'
    text = (root / shown).read_text(encoding="utf-8")
    table = csv_table_html(text) if suffix == ".csv" else metrics_table_html(text, shown)
    return caption + table


CLAIMS_TABLES = ("artifacts/tables/claims.csv", "artifacts/tables/latency_claims_cpu.csv")  # exact, timed
_VERDICT_CLASS = {"holds": "ok", "not testable here": "note"}


def ledger_html(root: Path, stages: list[StageReport], base: Path) -> str:
    """The claims ledger (the ``claims`` stage's exact table) for the top of the page: its verdicts counted, and
    each claim with its verdict, its detail and a link to the section of the stage that wrote its evidence.
    Empty where the table is absent; the ledger of claims judged on latency is linked (a time measurement)."""
    path = root / CLAIMS_TABLES[0]
    if not path.is_file():
        return ""
    claims = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    writers = {file: s.name for s in stages for o in s.outputs for file in (o.path, *o.files)}
    from .analysis.claims import verdict_counts

    counts = verdict_counts(claims)

    def evidence(claim: Mapping[str, str]) -> str:
        if claim["evidence"] not in writers:
            return _escape(claim["evidence"])
        return f'<a href="#{_anchor(writers[claim["evidence"]])}">{_escape(posixpath.basename(claim["evidence"]))}</a>'

    body = "".join(
        f"<tr><td>{_escape(c['id'])}</td><td>{_escape(c['claim'])}<br><small>{_escape(c['source'])}</small></td>"
        f'<td class="{_VERDICT_CLASS.get(c["verdict"], "warn")}">{_escape(c["verdict"])}</td>'
        f"<td>{_escape(c['detail'])}</td><td>{evidence(c)}</td></tr>\n"
        for c in claims
    )
    head = "<thead><tr><th>id</th><th>claim</th><th>verdict</th><th>detail</th><th>evidence</th></tr></thead>"
    timed = root / CLAIMS_TABLES[1]
    timed_link = f" Judged on latency: {_link(str(timed), base)} (a time measurement)." if timed.is_file() else ""
    summary = "; ".join(f"{_escape(verdict)}: {count}" for verdict, count in counts.items() if count)
    return (
        '<section id="claims">\n<h2>claims ledger</h2>\n'
        f"<p>Every checkable claim of the papers' READMEs and model cards, judged by its rule on a table of this "
        f"pipeline ({len(claims)} claims; {summary}).{timed_link}</p>\n"
        f'<div class="scroll"><table>\n{head}\n<tbody>\n{body}</tbody></table></div>\n</section>\n'
    )


_STATE_CLASS = {"matches dvc.lock": "ok", "in DVC's cache (not in git)": "ok", MACHINE_STATE: "note"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 2rem 4rem; }
h2 { border-top: 2px solid #ddd; padding-top: 1rem; margin-top: 2.5rem; font-family: monospace; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.15rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.scroll { overflow-x: auto; max-height: 32rem; overflow-y: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.5rem; overflow-x: auto; font-size: 0.85rem; }
.file { margin: 1rem 0 0.2rem; } .note { color: #555; font-style: italic; margin: 0.2rem 0; }
.ok { color: #1a7f37; } .warn { color: #b35900; font-weight: bold; }
nav ul { columns: 3; font-family: monospace; font-size: 0.85rem; }
"""


def report_html(stages: list[StageReport], root: str | os.PathLike, html_path: str | os.PathLike) -> str:
    """The report page for ``stages`` (:func:`collect_report` of ``root``), links relative to ``html_path``."""
    root = Path(root)
    base = Path(html_path).resolve().parent
    stale = sum(1 for s in stages for o in s.outputs if _STATE_CLASS.get(o.state) not in ("ok", "note")) + sum(
        len(s.params_changed) + (s.locked_params is None) for s in stages
    )
    other_machine = sum(1 for s in stages for o in s.outputs if o.state == MACHINE_STATE)
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        "<title>Pipeline report</title>\n<style>" + _STYLE + "</style>\n</head>\n<body>\n<main>\n",
        "<h1>Pipeline report: every figure and table, by stage</h1>\n",
        "<p>One section per stage of <code>dvc.yaml</code>, in its order (the <code>check_*</code> stages, which only "
        "check a stage's parameters before it runs, are left out): the stage's description, the section of "
        "<code>params.yaml</code> it reads, and each output with the md5 hash <code>dvc.lock</code> records for it, "
        "compared with the file in the workspace. Tables are copied in; figures, PDF, LaTeX, Markdown, notebooks and "
        "logs are linked relatively (open this page from its place in the repository). Files named "
        "<code>latency*</code> are time measurements and are linked, not copied in, so this page is byte-identical "
        "across reruns.</p>\n",
        f"<p>{len(stages)} stages; "
        + (
            '<span class="ok">every output matches dvc.lock and every parameter is as recorded.</span>'
            if not stale
            else f'<span class="warn">{stale} output(s) or parameter section(s) differ from dvc.lock '
            "(edited or rebuilt since the lock was written; <code>dvc status</code> lists them).</span>"
        )
        + (
            f' <span class="note">{other_machine} machine-dependent output(s) differ from dvc.lock, as they do when '
            "this machine's CPU is not the one that wrote the lock (the reason is beside each).</span>"
            if other_machine
            else ""
        )
        + "</p>\n",
        ledger_html(root, stages, base),
        "<nav><ul>\n",
        "".join(f'<li><a href="#{_anchor(s.name)}">{_escape(s.name)}</a></li>\n' for s in stages),
        "</ul></nav>\n",
    ]
    for stage in stages:
        parts.append(f'<section id="{_anchor(stage.name)}">\n<h2>{_escape(stage.name)}</h2>\n')
        parts.append(f"<p>{_escape(stage.desc)}</p>\n")
        if stage.locked_params is None:
            parts.append('<p class="warn">Not in dvc.lock: this stage has not run since it was added.</p>\n')
        for key, value in stage.params.items():
            dumped = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=None, width=100)
            changed = key in stage.params_changed
            flag = ' <span class="warn">(differs from the value dvc.lock recorded)</span>' if changed else ""
            parts.append(f"<p>params.yaml: <code>{_escape(key)}</code>{flag}</p>\n<pre>{_escape(dumped)}</pre>\n")
        rows = "".join(
            f"<tr><td><code>{_escape(o.path)}</code>{' (metric)' if o.metric else ''}</td>"
            f"<td><code>{_escape(o.locked_md5 or '')}</code></td>"
            f'<td class="{_STATE_CLASS.get(o.state, "warn")}">{_escape(o.state)}</td>'
            f"<td>{_escape(o.machine or '')}</td></tr>\n"
            for o in stage.outputs
        )
        parts.append(
            "<table>\n<thead><tr><th>output</th><th>md5 in dvc.lock</th><th>workspace</th>"
            "<th>depends on the machine</th></tr></thead>\n"
            f"<tbody>\n{rows}</tbody></table>\n"
        )
        files = [path for o in stage.outputs for path in o.files]
        for stem, siblings in _groups(files).items():
            parts.append(_show_file(root, stem, siblings, base) + "\n")
        parts.append("</section>\n")
    parts.append("</main>\n</body>\n</html>\n")
    return "".join(parts)


def broken_links(page: str, html_path: str | os.PathLike) -> list[str]:
    """Relative ``src``/``href`` targets of ``page`` (written at ``html_path``) that do not exist."""
    base = Path(html_path).resolve().parent
    targets = _RELATIVE_LINK.findall(page)
    return [target for target in targets if not Path(os.path.normpath(base / html.unescape(target))).exists()]


def render_report(html_path: str | os.PathLike = "artifacts/report.html", root: str | os.PathLike = ".") -> Path:
    """Write the report of the DVC project at ``root`` to ``html_path``, atomically; links are relative to it.

    The page is checked before it is written (:func:`repnext.render.page_problems`: no script, no remote
    resource, no raw TeX, every verification-table row ``true``; and no relative link to a missing file);
    a problem raises :class:`ReportError` and nothing is written.
    """
    from .render import page_problems

    page = report_html(collect_report(root), root, html_path)
    problems = page_problems(page, expect_math=False, expect_checks=False)
    problems += [f"link to a missing file: {target}" for target in broken_links(page, html_path)]
    if problems:
        raise ReportError(f"{html_path}: {problems[0]}")
    write_text(html_path, page)
    return Path(html_path)
