import pytest
import timm
import torch

from repnext.analysis.precision import UNIT_ROUNDOFF, precision_errors, precision_figure, stage_outputs


@pytest.fixture(scope="module")
def table():
    return precision_errors(["recnext_m0"], dtypes=("bfloat16", "float16"), resolution=32, batch_size=1)


def test_rows_per_form_dtype_and_output(table):
    rows = table.sorted_rows()
    assert len(rows) == 2 * 2 * 5
    assert [r["output"] for r in rows[:5]] == ["stage0", "stage1", "stage2", "stage3", "logits"]
    assert {(r["form"], r["dtype"]) for r in rows} == {(f, d) for f in ("train", "deploy") for d in UNIT_ROUNDOFF}


def test_half_precision_errors_are_rounding_sized_and_ordered(table):
    for row in table.rows:
        assert row["finite"]
        # a cast model is not bit-exact, yet within a few dozen unit roundoffs
        assert 0 < row["rel_l2"] < 50 * row["unit_roundoff"]
    mean = {d: sum(r["rel_l2"] for r in table.rows if r["dtype"] == d) for d in UNIT_ROUNDOFF}
    assert mean["bfloat16"] > mean["float16"]  # 8 mantissa bits against 11


def test_stage_outputs_cover_every_stage_and_the_logits():
    model = timm.create_model("repnext_m0").eval()
    outputs = stage_outputs(model, torch.zeros(1, 3, 64, 64))
    assert list(outputs) == ["stage0", "stage1", "stage2", "stage3", "logits"]
    assert outputs["stage3"].shape == (1, 320, 2, 2) and outputs["logits"].shape == (1, 1000)
    with torch.no_grad():
        torch.testing.assert_close(outputs["logits"], model(torch.zeros(1, 3, 64, 64)))


def test_bad_parameters_and_the_figure(table):
    with pytest.raises(ValueError, match="dtypes"):
        precision_errors(["recnext_m0"], dtypes=("float32",))
    with pytest.raises(ValueError, match="forms"):
        precision_errors(["recnext_m0"], forms=("fused",))
    assert len(precision_figure(table).axes) == 2
