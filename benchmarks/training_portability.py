"""What it would cost to make the training stages byte-identical on every CPU; run it on an otherwise idle machine.

Trains one default experiment (RepNeXt-M0, ``params.yaml: training``, ``--epochs`` epochs) on ``builtin:photos``
twice, natively and with every library held to kernels that do not depend on the instruction set: ATen's default
(scalar) kernels, oneDNN capped at SSE4.1, MKL in its conditional-numerical-reproducibility mode
(``MKL_CBWR=COMPATIBLE``), numpy's dispatch off, one thread. Writes the wall time of each, their ratio, whether the
two logs agree byte for byte, and the training stages' projected time under the portable settings
(``--stage-seconds``: their time in the latest ``dvc repro -f``) to ``benchmarks/results/latency_training_portability.
{csv,md}``, a time measurement. The portable run's bytes are those of any CPU only as far as these libraries keep
their promise; this machine can simulate another CPU, not be one.

    python benchmarks/training_portability.py --epochs 2 --stage-seconds 151.5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from repnext.tables import Table

ROOT = Path(__file__).resolve().parents[1]


def portable_env() -> dict[str, str]:
    """Environment variables that hold torch, oneDNN, MKL and numpy to instruction-set-independent kernels."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def train(out: Path, epochs: int, env: dict[str, str]) -> float:
    """Seconds for ``repnext train`` of the default RepNeXt-M0 experiment into ``out``."""
    training = yaml.safe_load((ROOT / "params.yaml").read_text())["training"]
    command = [sys.executable, "-m", "repnext", "train", "repnext_m0", "--data", "builtin:photos", "--out", str(out),
               "--epochs", str(epochs), "--img-size", str(training["img_size"]), "--batch-size",
               str(training["batch_size"]), "--lr", str(training["lr"]), "--warmup-epochs",
               str(training["warmup_epochs"]), "--seed", str(training["seed"]), "--threads", str(training["threads"]),
               "--no-checkpoints", "--no-progress"]  # fmt: skip
    command += ["--channels-last"] if training["channels_last"] else []
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stage-seconds", type=float, required=True, help="train + train_weights, dvc repro -f")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency_training_portability")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        native = train(Path(tmp) / "native", args.epochs, {"OMP_NUM_THREADS": "1"})
        portable = train(Path(tmp) / "portable", args.epochs, portable_env())
        same = (Path(tmp) / "native" / "log.txt").read_bytes() == (Path(tmp) / "portable" / "log.txt").read_bytes()
    ratio = portable / native
    row = dict(epochs=args.epochs, native_s=native, portable_s=portable, ratio=ratio, same_log=same,
               stage_s=args.stage_seconds, projected_stage_s=args.stage_seconds * ratio,
               extra_s=args.stage_seconds * (ratio - 1))  # fmt: skip
    floats = {key: ".1f" for key in ("native_s", "portable_s", "stage_s", "projected_stage_s", "extra_s")}
    table = Table(list(row), [row], {**floats, "ratio": ".2f"})
    for suffix in ("csv", "md"):
        table.write(args.out.with_suffix(f".{suffix}"))
    print(table.render("md"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
