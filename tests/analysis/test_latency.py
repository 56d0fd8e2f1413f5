"""Latency measurement: the protocol (interleaving, spread), the tables, and clear errors on bad input."""

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch

from repnext.analysis.accuracy_latency import (
    measured_accuracy_latency,
    published_accuracy_latency,
    published_recnext,
    summarize_latency,
)
from repnext.analysis.latency import (
    BenchmarkError,
    benchmark,
    check_backend,
    check_device,
    sgemm_rate,
    throughput,
    time_interleaved,
)
from repnext.cli import main

ROOT = Path(__file__).parents[2]


def test_interleaving_rotates_the_order_every_round():
    order = []
    calls = {key: (lambda key=key: order.append(key)) for key in "abc"}
    times = time_interleaved(calls, rounds=3, warmup=1, progress=False)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up first, then rotated rounds
    assert {key: len(t) for key, t in times.items()} == dict(a=3, b=3, c=3) and min(min(times.values())) >= 0


def test_throughput_times_until_the_measuring_time_has_passed():
    rate, calls = throughput(lambda: sum(range(1000)), batch_size=8, device=torch.device("cpu"), warmup_s=0.01,
                             measure_s=0.02)  # fmt: skip
    assert calls >= 1 and rate > 0


def test_benchmark_rows_carry_latency_spread_and_roofline_fraction():
    latency, rates = benchmark(["repnext_m0"], backends=["eager", "torchscript"], resolution=32, threads=1, rounds=3,
                               warmup=1, batch_size=2, sgemm_gmacs=10.0, throughput_seconds=(0.01, 0.02),
                               unfused_backends=["eager"], progress=False)  # fmt: skip
    rows = {(r["form"], r["backend"]): r for r in latency.rows}
    assert set(rows) == {("unfused", "eager"), ("fused", "eager"), ("fused", "torchscript")}
    for row in rows.values():
        assert 0 < row["min_ms"] <= row["median_ms"] and row["iqr_ms"] >= 0 and row["rounds"] == 3
        assert math.isclose(row["sgemm_fraction"], row["gmacs_per_s"] / 10.0)
        assert math.isclose(row["gmacs_per_s"], row["macs_g"] / (row["median_ms"] / 1e3))
    assert rows["fused", "eager"]["macs_g"] == rows["unfused", "eager"]["macs_g"]  # the fused model's MACs
    assert {(r["form"], r["backend"]) for r in rates.rows} == set(rows) and all(
        r["batch_size"] == 2 for r in rates.rows
    )


def test_sgemm_rate_is_a_positive_gmac_rate():
    assert sgemm_rate(threads=1, size=128, rounds=2) > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "tensorrt"], "repnext bench: unknown backend 'tensorrt'; choose one of eager, channels_last,"),
        (["--backend", "openvino"], "repnext bench: backend 'openvino' needs the 'openvino' package"),
        (["--device", "tpu"], "repnext bench: unsupported device 'tpu'"),
    ],
)
def test_bench_bad_input_is_one_line(argv, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed, even where it is
    with pytest.raises(SystemExit) as raised:
        main(["bench", "repnext_m0", *argv])
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_bench_names_unknown_models_and_missing_cuda():
    with pytest.raises(BenchmarkError, match=r"unknown model 'repnext_m9' \(not a timm or repnext model\)"):
        benchmark(["repnext_m9"])
    if not torch.cuda.is_available():
        with pytest.raises(BenchmarkError, match="'cuda' requested but no CUDA device is available"):
            check_device("cuda")
    assert check_backend("eager") == "eager"


def test_bench_cli_writes_the_latency_table(tmp_path, capsys):
    out = tmp_path / "latency_cpu.csv"
    main(["bench", "repnext_m0", "--fused", "--resolution", "32", "--rounds", "2", "--warmup", "1", "--threads", "1",
          "-o", str(out)])  # fmt: skip
    frame = pd.read_csv(out)
    assert list(frame.model) == ["repnext_m0"] and list(frame.form) == ["fused"] and frame.median_ms[0] > 0
    assert "GMAC/s on 1 thread(s)" in capsys.readouterr().err


def test_summary_and_measured_accuracy_join_published_numbers():
    runs = pd.DataFrame([
        dict(model="repnext_m1", form="unfused", backend="eager", median_ms=20.0, macs_g=0.8, gmacs_per_s=40.0,
             sgemm_fraction=0.4),
        dict(model="repnext_m1", form="fused", backend="eager", median_ms=10.0, macs_g=0.8, gmacs_per_s=80.0,
             sgemm_fraction=0.8),
        dict(model="repnext_m1", form="fused", backend="onnxruntime", median_ms=8.0, macs_g=0.8, gmacs_per_s=100.0,
             sgemm_fraction=1.0),
        dict(model="repvit_m1_0", form="fused", backend="eager", median_ms=9.0, macs_g=0.8, gmacs_per_s=90.0,
             sgemm_fraction=0.9),
    ])  # fmt: skip
    summary = {row["model"]: row for row in summarize_latency(runs).rows}
    assert summary["repnext_m1"]["fused_speedup"] == 2.0 and summary["repnext_m1"]["fastest_backend"] == "onnxruntime"
    assert summary["repvit_m1_0"]["family"] == "RepViT" and summary["repvit_m1_0"]["fused_speedup"] is None
    measured = measured_accuracy_latency(pd.DataFrame(summary.values()))
    top1 = {(r["model"], r["distillation"]): (r["top1"], r["latency_ms"]) for r in measured.rows}
    assert top1 == {("repnext_m1", False): (77.5, 8.0), ("repnext_m1", True): (78.8, 8.0),
                    ("repvit_m1_0", True): (80.0, 9.0)}  # fmt: skip


def test_published_accuracy_latency_rows_name_their_source_and_device():
    for frame in (published_accuracy_latency(), published_recnext()):
        assert frame.source.str.len().min() > 10 and frame.device.str.startswith("iPhone").all()
        assert frame.top1.between(70, 90).all() and (frame.latency_ms > 0).all()
        assert not frame.duplicated(["model", "distillation"]).any()
    assert len(published_recnext()) == 24  # M0-M5 and A0-A5, with and without distillation


def test_latency_fixture_matches_the_stage_columns():
    frame = pd.read_csv(ROOT / "tests" / "data" / "latency_cpu.csv")
    assert {"repnext_m1", "repvit_m0_9"} <= set(frame.model) and frame.fastest_ms.gt(0).all()


def test_bench_models_load_weights_through_the_resolver(tmp_path):
    from repnext.analysis.latency import build_model

    torch.manual_seed(1)
    source = timm.create_model("repnext_m0", num_classes=4, embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1)).eval()
    torch.save({"model": source.state_dict(), "args": {}}, tmp_path / "tiny.pth")
    with pytest.raises(BenchmarkError, match=r"tiny\.pth: shape mismatch"):  # the variant's own architecture
        build_model("repnext_m0", "fused", torch.device("cpu"), str(tmp_path / "tiny.pth"))
    torch.save({"model": timm.create_model("repnext_m0", num_classes=4).state_dict()}, tmp_path / "m0.pth")
    fused = build_model("repnext_m0", "fused", torch.device("cpu"), str(tmp_path / "m0.pth"))
    assert fused.num_classes == 4 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
