"""Latency measurement: isolation (one process per backend, the others stopped), verification before
timing, medians with spreads against the measured peak, and one clear line for what is missing.
No test asserts a speed: timings on a shared machine are noise; the structure is what is checked."""

import functools
import math
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn

from repnext.analysis.accuracy_latency import (
    measured_accuracy_latency,
    published_accuracy_latency,
    published_recnext,
    summarize_forms,
    summarize_latency,
)
from repnext.analysis.latency import (
    BenchmarkError,
    benchmark,
    check_backend,
    check_device,
    describe_peak,
    missing_requirement,
    spread,
    time_interleaved,
)
from repnext.analysis.latency.backends import build_model, fuse_model, prepare_torch, unchanged_by_fusion
from repnext.analysis.latency.bench import BUILDER, NOTHING_TO_FUSE
from repnext.analysis.latency.session import Session
from repnext.analysis.latency.workers import Worker, cpu_seconds, timed_block
from repnext.analysis.roofline import KINDS
from repnext.cli import main

ROOT = Path(__file__).parents[2]
OPENVINO = missing_requirement("openvino")
COMPILE = missing_requirement("compile")
LINUX = sys.platform.startswith("linux")
FUSED_FORMS = ("fused", "two_branch")  # the fused form and a merged one (RepNeXt only; single_branch takes its path)
# One xdist worker runs this module: the shared benchmark below and the workers' forkserver start once.
pytestmark = pytest.mark.xdist_group("latency_workers")


GIVEN_MACS = 1.234e9  # a count passed in for RepNeXt-M0 (as the stage passes model_stats'), used instead of counting
PROFILED = ["onnxruntime"] + ([] if OPENVINO else ["openvino"])


@functools.cache
def _run():
    """One small benchmark, shared: eager (both forms), TorchScript and ONNX Runtime (and OpenVINO if installed)
    on the fused form, throughput at batch 2, tiny peak kernels; StarNet-S050 has nothing to fuse; two models, so
    the second builder builds one of them."""
    backends = ["eager", "torchscript", "onnxruntime"] + ([] if OPENVINO else ["openvino"])
    return benchmark(["repnext_m0", "starnet_s050"], backends=backends, resolution=32, threads=1, rounds=3,
                     min_rounds=2, warmup=1, batch_size=2, unfused_backends=["eager"], gemm_size=64, dwconv_side=16,
                     copy_mib=4, group_size=2, throughput_seconds=(0.01, 0.02), macs={"repnext_m0": GIVEN_MACS},
                     forms=("unfused", *FUSED_FORMS),
                     profile_backends=PROFILED, profile_calls=3)  # fmt: skip


def test_each_backend_runs_in_its_own_process_and_the_others_are_stopped_meanwhile():
    result = _run()
    assert set(result.pids) >= {"eager", "torchscript", "onnxruntime", BUILDER} or (os.cpu_count() or 1) == 1
    assert len(set(result.pids.values())) == len(result.pids) and os.getpid() not in result.pids.values()
    assert all(not Path(f"/proc/{pid}").exists() for pid in result.pids.values()) or not LINUX  # all closed
    assert result.blocks >= 3 * len(result.pids)  # peak kernels and configurations, every round
    if LINUX:
        assert result.foreign_cpu_s == 0.0  # stopped workers used no CPU during anyone's timed block


def test_rows_carry_median_spread_and_fraction_of_the_measured_peak():
    result = _run()
    rows = {(r["form"], r["backend"]): r for r in result.latency.rows if r["model"] == "repnext_m0"}
    backends = ["eager", "torchscript", "onnxruntime"] + ([] if OPENVINO else ["openvino"])
    assert set(rows) == {("unfused", "eager")} | {(f, b) for f in FUSED_FORMS for b in backends}
    assert not any(r["form"] in FUSED_FORMS[1:] for r in result.latency.rows if r["model"] == "starnet_s050")
    assert all(row["macs_g"] == GIVEN_MACS / 1e9 for row in rows.values())  # given, not counted again
    gemms = [r for r in result.peaks.rows if r["kernel"] == "gemm"]
    assert {r["backend"] for r in gemms} >= {"eager", "onnxruntime"} and result.copy_gb_per_s > 0
    assert result.peak_gmacs == max(r["rate"] for r in gemms)
    for row in rows.values():
        assert row["status"] == "ok" and row["rounds"] >= 2 and row["samples"] >= row["rounds"]
        assert 0 < row["min_ms"] <= row["median_ms"] and row["iqr_ms"] >= 0
        assert math.isclose(row["gmacs_per_s"], row["macs_g"] / (row["median_ms"] / 1e3))
        assert math.isclose(row["peak_fraction"], row["gmacs_per_s"] / result.peak_gmacs)
    assert rows["fused", "onnxruntime"]["max_abs_error"] < 1e-4  # verified against PyTorch before timing
    assert all(rows[form, "onnxruntime"]["max_abs_error"] < 1e-4 for form in FUSED_FORMS[1:])
    kernels = {(r["kernel"], r["backend"]) for r in result.peaks.rows}
    assert {(f"dwconv{k}", b) for k in (3, 7, 11) for b in ("eager", "onnxruntime")} | {("copy", "eager")} <= kernels
    for row in rows.values():  # the fused form's roofline bound, from this run's rates
        assert row["bound_ms"] > 0 and math.isclose(row["bound_fraction"], row["bound_ms"] / row["median_ms"])
    assert len({row["bound_ms"] for row in rows.values()}) == 1
    assert {(r["form"], r["backend"]) for r in result.throughput.rows if r["model"] == "repnext_m0"} == set(rows)
    assert describe_peak(result, 1).startswith("peak: float32 GEMM 64^3 on 1 thread(s), GMAC/s: eager ")


def test_each_fused_model_is_profiled_by_kind_beside_its_bound():
    """Every timed fused model on each profiled runtime: one row per layer kind and one for the whole model, whose
    bound is the latency row's and whose profiled time is the sum of the kinds'."""
    result = _run()
    rows = result.profiles.rows
    timed = {(r["model"], r["backend"]): r for r in result.latency.rows if r["form"] == "fused"}
    expected = {key for key, row in timed.items() if key[1] in PROFILED and row["status"] == "ok"}
    assert {(r["model"], r["backend"]) for r in rows} == expected >= {("repnext_m0", b) for b in PROFILED}
    for model, backend in expected:
        latency = timed[model, backend]
        mine = [r for r in rows if (r["model"], r["backend"]) == (model, backend)]
        assert [r["kind"] for r in mine] == [*KINDS, "all"]
        whole = mine[-1]
        assert whole["bound_ms"] == pytest.approx(latency["bound_ms"]) and whole["latency_ms"] == latency["median_ms"]
        assert whole["profiled_ms"] > 0 and whole["profiled_ms"] == pytest.approx(
            math.fsum(r["profiled_ms"] for r in mine[:-1])
        )
        assert whole["share"] == 1.0 and whole["nodes"] == sum(r["nodes"] for r in mine[:-1]) > 0
        assert {r["kind"] for r in mine if r["profiled_ms"] > 0} >= {"1x1 conv", "depthwise kxk"}
        assert all(r["bound_fraction"] is None or r["bound_fraction"] >= 0 for r in mine)


def test_profiling_a_backend_that_is_not_timed_is_one_line():
    with pytest.raises(BenchmarkError, match=r"^profiling onnxruntime needs it timed: add it to the backends"):
        benchmark(["repnext_m0"], ["fused"], ["eager"], resolution=32, profile_backends=["onnxruntime"])
    with pytest.raises(BenchmarkError, match=r"^no per-layer profiler for eager; choose from onnxruntime, openvino"):
        benchmark(["repnext_m0"], ["fused"], ["eager"], resolution=32, profile_backends=["eager"])


def test_a_model_with_nothing_to_fuse_times_its_fused_form_only():
    """StarNet has no branches: its training form is the fused module, reported as not timed, never as a speed-up."""
    rows = {(r["form"], r["backend"]): r for r in _run().latency.rows if r["model"] == "starnet_s050"}
    assert rows["unfused", "eager"]["status"] == NOTHING_TO_FUSE and rows["unfused", "eager"].get("median_ms") is None
    fused = {backend: r for (form, backend), r in rows.items() if form == "fused"}
    assert all(fused[b]["status"] == "ok" and fused[b]["median_ms"] > 0 for b in ("eager", "onnxruntime"))
    summary = {r["model"]: r for r in summarize_latency(pd.DataFrame(_run().latency.rows)).rows}
    assert summary["starnet_s050"]["fused_speedup"] == 1.0 and summary["starnet_s050"]["unfused_ms"] is None


def test_an_onnxruntime_worker_gives_all_its_sessions_one_pool(tmp_path):
    """Per-session pools spin after a call and slowed the next session's call 2x; a worker's sessions share one.
    Run in a fresh interpreter: the shared pool, once set, holds for the whole process."""
    if reason := missing_requirement("onnxruntime"):
        pytest.skip(reason)
    code = (
        "import pathlib, sys\n"
        "from repnext.analysis.latency.backends import prepare_gemm\n"
        "from repnext.runtimes import RuntimeSetupError, onnx_session, share_onnxruntime_pool\n"
        "work = pathlib.Path(sys.argv[1])\n"
        "prepare_gemm('onnxruntime', 8, 1, work)  # writes gemm8.onnx\n"
        "assert onnx_session(work / 'gemm8.onnx', 1).get_session_options().use_per_session_threads\n"
        "share_onnxruntime_pool(1)\n"
        "sessions = [onnx_session(work / 'gemm8.onnx', 1) for _ in range(2)]\n"
        "assert not any(s.get_session_options().use_per_session_threads for s in sessions)\n"
        "try:\n    share_onnxruntime_pool(2)\nexcept RuntimeSetupError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ONNX Runtime's shared pool has 1 threads, not 2"


def test_a_spinning_worker_is_stopped_while_another_one_times():
    """A worker whose thread keeps spinning (as idle ONNX Runtime and OpenMP pools do) uses CPU during another
    worker's block unless it is stopped; stopped, it uses none. The control shows the check can fail."""
    if not LINUX:
        pytest.skip("reads CPU times from /proc")
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    timer, spinner = Worker("eager", 1, "cpu", tmp), Worker("eager", 1, "cpu", tmp)
    try:
        timer.request("peak", "peak/copy", "copy", 4)
        spinner.request("spin", 60.0)
        plan = [("peak/copy", 400)]  # long enough (>100 ms) for CPU-time ticks of 10 ms
        _, unstopped = timed_block(timer, [spinner], plan, isolate=False)
        times, stopped = timed_block(timer, [spinner], plan, isolate=True)
        assert unstopped > 0 and stopped == 0.0 and len(times["peak/copy"]) == 400
        assert spinner.paused and cpu_seconds(spinner.pid) is not None
    finally:
        timer.close()
        spinner.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The builder's files for fused RepNeXt-M0 at 32x32 (in this process: Session is what a worker runs)."""
    workdir = tmp_path_factory.mktemp("bench")
    builder = Session("eager", 1, torch.device("cpu"), workdir)
    info = builder.build("repnext_m0", ["fused"], 32, onnx_forms=["fused"], pickle_forms=["fused"])
    return workdir, info


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "openvino"])
def test_backends_are_verified_before_they_are_timed(backend, built):
    if reason := missing_requirement(backend):
        pytest.skip(reason)
    workdir, info = built
    assert info["macs"] > 0 and info["onnx_errors"] == {}
    session = Session(backend, 1, torch.device("cpu"), workdir)
    assert session.prepare("m/fused/x", "repnext_m0", "fused", 32, 1, tolerance=1e-4)["max_abs_error"] < 1e-4
    with pytest.raises(ValueError, match=r"output differs from PyTorch by .* not timed"):
        np.save(workdir / "repnext_m0-fused.npy", np.load(workdir / "repnext_m0-fused.npy") + 1.0)  # wrong reference
        try:
            session.prepare("m/fused/y", "repnext_m0", "fused", 32, 1, tolerance=1e-4)
        finally:
            np.save(workdir / "repnext_m0-fused.npy", np.load(workdir / "repnext_m0-fused.npy") - 1.0)
    assert "m/fused/y" not in session.calls


def test_a_timm_peer_is_fused_by_timm_and_computes_the_same():
    """Peers with branches (MobileOne) fuse with timm's reparameterize_model; the stage times them in this form."""
    model = build_model("mobileone_s0", "unfused")
    fused = fuse_model(model)
    assert not unchanged_by_fusion(model, fused)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # random weights give logits of ~1e11: the stage's tolerance, relative to the largest
        reference = model(x)
        assert (fused(x) - reference).abs().max() <= 1e-4 * reference.abs().max()
    assert unchanged_by_fusion(build_model("starnet_s050", "unfused"), build_model("starnet_s050", "fused"))


def test_a_block_refills_the_caches_with_one_untimed_call_per_key(tmp_path):
    """After a switch the caches hold another worker's data: each key's first call in a block is not timed."""
    session, made = Session("eager", 1, torch.device("cpu"), tmp_path), []
    session.calls.update(a=lambda: made.append("a"), b=lambda: made.append("b"))
    times = session.block([("a", 3), ("b", 1)])
    assert made == ["a"] * 4 + ["b"] * 2 and [len(times["a"]), len(times["b"])] == [3, 1]


def test_compile_backend_runs_a_module_as_eager_does():
    if COMPILE:
        pytest.skip(COMPILE)
    conv, x = nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(prepare_torch(conv, "compile", x)(), prepare_torch(conv, "eager", x)())


def test_missing_optional_backends_are_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed, even where it is
    line = missing_requirement("openvino")
    assert line.startswith("backend 'openvino' needs the 'openvino' package") and "\n" not in line
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert missing_requirement("compile") == (
        "backend 'compile' needs a C++ compiler on PATH (torch.compile's inductor builds C++ kernels)"
    )
    assert missing_requirement("eager") is None


def test_interleaving_rotates_the_order_every_round():
    order = []
    calls = {key: (lambda key=key: order.append(key)) for key in "abc"}
    times = time_interleaved(calls, rounds=3, warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up first, then rotated rounds
    assert {key: len(t) for key, t in times.items()} == dict(a=3, b=3, c=3) and min(min(times.values())) >= 0
    assert spread([0.001, 0.002, 0.003, 0.004, 0.005]) == (3.0, 2.0, 1.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "tensorrt"], "repnext bench: unknown backend 'tensorrt'; choose one of eager, channels_last,"),
        (["--backend", "openvino"], "repnext bench: backend 'openvino' needs the 'openvino' package"),
        (["--device", "tpu"], "repnext bench: unsupported device 'tpu'"),
    ],
)
def test_bench_bad_input_is_one_line(argv, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
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


def test_bench_cli_prints_the_peak_first_and_writes_the_latency_table(tmp_path, capsys):
    out = tmp_path / "latency_cpu.csv"
    main(["bench", "repnext_m0", "--fused", "--resolution", "32", "--rounds", "2", "--warmup", "1", "--threads", "1",
          "--gemm-size", "64", "--dwconv-side", "16", "-o", str(out), "--progress"])  # fmt: skip
    frame = pd.read_csv(out)
    assert list(frame.model) == ["repnext_m0"] and list(frame.form) == ["fused"] and frame.median_ms[0] > 0
    assert frame.status[0] == "ok" and frame.peak_gmacs[0] > 0 and frame.iqr_ms[0] >= 0
    err = capsys.readouterr().err
    assert "peak: float32 GEMM 64^3 on 1 thread(s), GMAC/s: eager" in err
    assert "bench:" in err and "timing repnext_m0" in err  # the bar says which phase the run is in


def test_summary_and_measured_accuracy_join_published_numbers():
    common = dict(macs_g=0.8, threads=2, peak_gmacs=100.0, iqr_ms=0.5, status="ok")
    runs = pd.DataFrame([
        dict(model="repnext_m1", form="unfused", backend="eager", median_ms=20.0, gmacs_per_s=40.0,
             peak_fraction=0.4, **common),
        dict(model="repnext_m1", form="fused", backend="eager", median_ms=10.0, gmacs_per_s=80.0, peak_fraction=0.8,
             **common),
        dict(model="repnext_m1", form="fused", backend="onnxruntime", median_ms=8.0, gmacs_per_s=100.0,
             peak_fraction=1.0, **common),
        dict(model="repnext_m1", form="fused", backend="openvino", median_ms=None, gmacs_per_s=None,
             peak_fraction=None, **{**common, "status": "ValueError: output differs from PyTorch"}),
        dict(model="repvit_m1_0", form="fused", backend="eager", median_ms=9.0, gmacs_per_s=90.0,
             peak_fraction=0.9, **common),
    ])  # fmt: skip
    summary = {row["model"]: row for row in summarize_latency(runs).rows}
    assert summary["repnext_m1"]["fused_speedup"] == 2.0 and summary["repnext_m1"]["fastest_backend"] == "onnxruntime"
    assert summary["repnext_m1"]["fastest_iqr_ms"] == 0.5 and summary["repnext_m1"]["peak_gmacs"] == 100.0
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
    assert len(published_recnext()) == 36  # M0-M5, A0-A5, T/S/B with and without shared channels; x2 distillation


def test_latency_fixture_matches_the_stage_columns():
    frame = pd.read_csv(ROOT / "tests" / "data" / "latency_cpu.csv")
    assert {"repnext_m1", "repvit_m0_9"} <= set(frame.model) and frame.fastest_ms.gt(0).all()
    assert {"peak_fraction", "fastest_iqr_ms", "threads", "peak_gmacs"} <= set(frame.columns)


def test_bench_models_load_weights_through_the_resolver(tmp_path):
    from repnext.analysis.latency import build_model

    torch.manual_seed(1)
    source = timm.create_model("repnext_m0", num_classes=4, embed_dim=(8, 16, 32, 64), depth=(1, 1, 1, 1)).eval()
    torch.save({"model": source.state_dict(), "args": {}}, tmp_path / "tiny.pth")
    with pytest.raises(BenchmarkError, match=r"tiny\.pth: shape mismatch"):  # the variant's own architecture
        build_model("repnext_m0", "fused", torch.device("cpu"), weights=str(tmp_path / "tiny.pth"))
    torch.save({"model": timm.create_model("repnext_m0", num_classes=4).state_dict()}, tmp_path / "m0.pth")
    fused = build_model("repnext_m0", "fused", torch.device("cpu"), weights=str(tmp_path / "m0.pth"))
    assert fused.num_classes == 4 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def test_the_isolation_benchmark_script_runs_and_prints_its_verdict_table(capsys):
    """A smoke run of benchmarks/latency_isolation.py (its verdict needs an idle machine, so it is not asserted)."""
    script = runpy.run_path(str(ROOT / "benchmarks" / "latency_isolation.py"))
    code = script["main"](["--model", "repnext_m0", "--resolution", "32", "--rounds", "2", "--repeat", "1",
                           "--backend", "eager", "--threads", "1", "--gemm-size", "64",
                           "--dwconv-side", "16"])  # fmt: skip
    out = capsys.readouterr().out
    assert code in (0, 1) and "| backend | mixed / alone, raw" in out and "\n| eager | " in out


def test_the_forms_table_names_the_fastest_verified_form_and_layout_per_runtime():
    """torch eager in NCHW (eager) and NHWC (channels_last) is one runtime; a failed verification is never fastest."""

    def row(form, backend, ms, status="ok"):
        return dict(model="repnext_m1", form=form, backend=backend, median_ms=ms, status=status)

    runs = pd.DataFrame([row("unfused", "eager", 1.0), row("fused", "eager", 20.0),
                         row("fused", "channels_last", 18.0), row("single_branch", "eager", 15.0),
                         row("single_branch", "channels_last", 16.0), row("fused", "openvino", 7.0),
                         row("single_branch", "openvino", 5.0, status="differs")])  # fmt: skip
    forms = {r["runtime"]: r for r in summarize_forms(runs).rows}
    assert set(forms) == {"torch", "openvino"}
    torch_row, openvino_row = forms["torch"], forms["openvino"]
    assert (torch_row["fastest_form"], torch_row["fastest_layout"], torch_row["fastest_ms"]) == (
        "single_branch",
        "NCHW",
        15.0,
    )
    assert torch_row["fused_ms"] == 20.0 and torch_row["speedup"] == pytest.approx(20 / 15)
    assert (openvino_row["fastest_form"], openvino_row["fastest_layout"], openvino_row["speedup"]) == ("fused", "", 1.0)
