"""The pipeline report: every figure and table by stage, with params and dvc.lock hashes, offline and deterministic."""

import contextlib
import fnmatch
import json
from pathlib import Path

import pytest
import yaml

from repnext import report
from repnext.cli import main
from repnext.render import check_page, find_chromium, page_problems
from repnext.report import CHECK_PREFIX, ReportError, collect_report, csv_table_html, render_report

ROOT = Path(__file__).parents[1]
PNG = bytes.fromhex(  # a 1x1 PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a3e1b3a70000000049454e44ae426082"
)
DVC_YAML = {
    "stages": {
        "make": {
            "desc": "Makes a figure folder, a table and metrics",
            "cmd": "true",
            "params": ["make"],
            "outs": [{"figures/make": {"cache": False}}, {"artifacts/tables/make.csv": {"cache": False}}],
            "metrics": [{"artifacts/metrics/make.json": {"cache": False}}],
        },
        "timing": {
            "foreach": "${timing}",
            "do": {
                "desc": "A time measurement",
                "cmd": "true",
                "params": ["timing.${key}"],
                "outs": [{"figures/${key}/latency_${key}.png": {"cache": False}}],
            },
        },
        "report": {"cmd": "true", "outs": [{"artifacts/report.html": {"cache": False}}]},
    }
}


def _project(root: Path) -> Path:
    """A small DVC project whose dvc.lock DVC itself writes (``dvc commit``) from the workspace."""
    from dvc.repo import Repo

    (root / "figures" / "make").mkdir(parents=True)
    (root / "figures" / "make" / "curve.png").write_bytes(PNG)
    (root / "figures" / "make" / "curve.pdf").write_bytes(b"%PDF-1.4 not really\n")
    (root / "figures" / "cpu").mkdir()
    (root / "figures" / "cpu" / "latency_cpu.png").write_bytes(PNG + b"\x00")
    (root / "artifacts" / "tables").mkdir(parents=True)
    (root / "artifacts" / "tables" / "make.csv").write_text("model,top1,passed\nm0,80.5,true\nm1,<b>,true\n")
    (root / "artifacts" / "tables" / "make.md").write_text("| model |\n")
    (root / "artifacts" / "metrics").mkdir()
    (root / "artifacts" / "metrics" / "make.json").write_text(json.dumps({"runs": 2, "best": {"top1": 80.5}}))
    (root / "params.yaml").write_text(yaml.safe_dump({"make": {"n": 2, "models": ["m0", "m1"]}, "timing": {"cpu": {}}}))
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    with contextlib.chdir(root), Repo.init(".", no_scm=True) as repo:  # DVC resolves targets from the cwd
        repo.commit("make", force=True)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("project"))


def test_report_reads_dvc_and_compares_every_output_with_the_hash_dvc_recorded(project, tmp_path):
    stages = {stage.name: stage for stage in collect_report(project)}
    assert list(stages) == ["make", "timing@cpu"]  # dvc.yaml's order, foreach expanded, the report left out
    make = stages["make"]
    assert make.desc == "Makes a figure folder, a table and metrics"
    assert make.params == {"make": {"n": 2, "models": ["m0", "m1"]}} and make.params_changed == []
    assert [(o.path, o.metric, o.state) for o in make.outputs] == [
        ("figures/make", False, "matches dvc.lock"),  # DVC's .dir hash, recomputed
        ("artifacts/tables/make.csv", False, "matches dvc.lock"),
        ("artifacts/metrics/make.json", True, "matches dvc.lock"),
    ]
    assert make.outputs[0].locked_md5.endswith(".dir")
    assert stages["timing@cpu"].locked_params is None  # never committed: reported, not an error
    assert stages["timing@cpu"].outputs[0].state == "not in dvc.lock"

    edited = _project(tmp_path / "edited")
    (edited / "figures" / "make" / "curve.pdf").write_bytes(b"%PDF-1.4 changed\n")
    (edited / "params.yaml").write_text(yaml.safe_dump({"make": {"n": 3, "models": ["m0"]}, "timing": {"cpu": {}}}))
    make = collect_report(edited)[0]
    assert make.outputs[0].state == "differs from dvc.lock" and make.outputs[1].state == "matches dvc.lock"
    assert make.params_changed == ["make"]


def test_report_page_is_offline_deterministic_and_shows_every_figure_and_table(project, tmp_path):
    first = render_report(project / "artifacts" / "report.html", root=project).read_bytes()
    elsewhere = render_report(tmp_path / "elsewhere" / "page.html", root=project).read_text()  # links still resolve
    assert f'href="../../{project.name}/figures/make/curve.pdf"' in elsewhere
    assert render_report(project / "artifacts" / "report.html", root=project).read_bytes() == first  # same bytes
    html = first.decode()
    assert page_problems(html, expect_math=False, expect_checks=True) == []  # the table's 'passed' column is true
    assert "Makes a figure folder, a table and metrics" in html and "models: [m0, m1]" in html
    assert "data:image" not in html and 'src="../figures/make/curve.png"' in html  # figures are linked
    assert 'src="../figures/cpu/latency_cpu.png"' in html and 'href="../figures/make/curve.pdf"' in html
    assert "<td>&lt;b&gt;</td>" in html and "<td>best.top1</td><td>80.5</td>" in html
    assert html.count("matches dvc.lock") == 3 and "not in dvc.lock" in html


def test_a_machine_dependent_output_that_differs_is_marked_so_not_as_a_mismatch(tmp_path, monkeypatch):
    root = _project(tmp_path / "machine")
    listed = tmp_path / "machine_dependent.csv"
    listed.write_text("pattern,reason\nartifacts/tables/make*,float32 sums\n")
    monkeypatch.setattr(report, "MACHINE_DEPENDENT", listed)
    (root / "artifacts" / "tables" / "make.csv").write_text("model,top1,passed\nm0,80.4,true\nm1,<b>,true\n")
    make = collect_report(root)[0]
    assert [(o.state, o.machine) for o in make.outputs][1] == (report.MACHINE_STATE, "float32 sums")
    html = render_report(root / "artifacts" / "report.html", root=root).read_text()
    assert "1 machine-dependent output(s) differ from dvc.lock" in html and "<td>float32 sums</td>" in html
    assert "output(s) or parameter section(s) differ" in html  # timing@cpu is not in dvc.lock: still counted
    (root / "artifacts" / "tables" / "make.csv").unlink()
    assert collect_report(root)[0].outputs[1].state == "missing"  # a missing output is never excused


def test_every_machine_dependent_pattern_names_outputs_and_the_docs_list_them():
    outputs = {path for stage in collect_report(ROOT) for o in stage.outputs for path in (o.path, *o.files)}
    patterns = [pattern for pattern, _ in report.machine_dependent_patterns()]
    assert all(fnmatch.filter(outputs, pattern) for pattern in patterns), "a pattern that matches no output"
    docs = (ROOT / "docs" / "reproducibility.md").read_text()
    assert all(f"`{pattern}`" in docs for pattern in patterns)


def test_the_page_opens_with_the_claims_ledger_linking_each_claim_to_its_evidence(tmp_path):
    root = _project(tmp_path / "claims")
    ledger = ("id,kind,claim,source,verdict,detail,evidence\n"
              "A-1,equivalence,It is exact,a README,holds,2 of 2 rows meet passed == True,artifacts/tables/make.csv\n"
              "A-2,latency,It is fast,a README,not testable here,needs an iPhone,\n")  # fmt: skip
    (root / "artifacts" / "tables" / "claims.csv").write_text(ledger)
    html = render_report(root / "artifacts" / "report.html", root=root).read_text()
    assert html.index("<h1>") < html.index('<section id="claims">') < html.index("<nav>")  # the page opens with it
    assert "2 claims; holds: 1; not testable here: 1" in html
    assert '<td class="ok">holds</td>' in html and '<a href="#stage-make">make.csv</a>' in html
    assert "<td>needs an iPhone</td>" in html


def test_a_failed_verification_row_or_a_broken_lock_fails_with_one_line_and_writes_nothing(tmp_path, monkeypatch):
    failing = _project(tmp_path / "failing")
    (failing / "artifacts" / "tables" / "make.csv").write_text("model,passed\nm0,false\n")
    with pytest.raises(ReportError, match=r"check not passed: m0 \| false"):
        render_report(failing / "report.html", root=failing)
    assert not (failing / "report.html").exists()
    (failing / "dvc.lock").write_text("stages: [unclosed\n")
    monkeypatch.chdir(failing)
    with pytest.raises(SystemExit, match=r"^repnext report: dvc.lock: not YAML"):
        main(["report", "report.html"])
    assert not (failing / "report.html").exists()


def test_csv_tables_escape_their_cells():
    assert csv_table_html('a,b\n"x,y",<i>\n').count("<td>") == 2 and "&lt;i&gt;" in csv_table_html("a\n<i>\n")


@pytest.mark.skipif(find_chromium() is None, reason="no headless Chromium installed")
def test_report_page_loads_offline_in_headless_chromium(project, tmp_path):
    page = render_report(project / "artifacts" / "chromium.html", root=project)
    assert check_page(page, screenshot=tmp_path / "top.png", window=(800, 600), expect_math=False) == []
    assert (tmp_path / "top.png").stat().st_size > 0


def test_the_report_stage_depends_on_every_output_it_shows():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = stages["report"]["deps"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for entry in body.get("outs", []) + body.get("metrics", []):
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            if name == "report" or name.startswith(CHECK_PREFIX) or options.get("cache", True):
                continue  # the report itself, parameter stamps; the dataset and published folder live in DVC's cache
            path = path.replace("${item.output_dir}", "figures/feature_maps")
            assert any(path == dep or path.startswith(dep + "/") for dep in deps), (name, path)
