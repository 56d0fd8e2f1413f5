import pytest

from repnext.io import atomic_path
from repnext.tables import Table


def table() -> Table:
    rows = [dict(model="b_net", macs=1.23456, ok=True), dict(model="a|x", macs=0.5, ok=False), dict(model="c")]
    return Table(["model", "macs", "ok"], rows, floats=dict(macs=".2f"), sort_by=("model",))


def test_renderings_are_sorted_and_fixed_format():
    assert table().render("csv") == "model,macs,ok\na|x,0.50,false\nb_net,1.23,true\nc,,\n"
    assert "| a\\|x | 0.50 | false |\n" in table().render("md")
    latex = table().render("latex")
    assert "b\\_net & 1.23 & true \\\\\n" in latex and latex.endswith("\\end{tabular}\n")
    assert '"macs": 1.23' in table().render("json")
    with pytest.raises(ValueError, match="unknown table format 'xls'"):
        table().render("xls")


def test_write_picks_format_from_suffix(tmp_path):
    table().write(tmp_path / "t.tex")
    assert (tmp_path / "t.tex").read_text().startswith("\\begin{tabular}{lll}")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
