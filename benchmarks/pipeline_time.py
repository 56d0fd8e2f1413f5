"""Time a whole pipeline run, stage by stage, and check it against the budget; run it on an otherwise idle machine.

Runs ``dvc repro`` (default ``-f``: every stage) from the repository root, stamps each ``Running stage`` line
DVC prints, and writes ``benchmarks/results/latency_pipeline.{csv,md}``: seconds per stage (until the next stage
starts, DVC's hashing included), the total wall time and the peak resident memory of the largest process. The
file is a time measurement (hence its name): it differs from run to run. Exits 1 if DVC fails or the run takes
longer than ``--budget-min``.

    python benchmarks/pipeline_time.py                 # dvc repro -f, budget 15 min
    python benchmarks/pipeline_time.py --dvc-args paper_results --budget-min 2
"""

from __future__ import annotations

import argparse
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from repnext.tables import Table

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dvc-args", default="-f", help="arguments after 'dvc repro' (default: -f)")
    parser.add_argument("--budget-min", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency_pipeline")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "dvc", "repro", *shlex.split(args.dvc_args)]
    starts: list[tuple[str, float]] = []
    begin = time.monotonic()
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            match = STAGE_LINE.match(line)
            if match:
                starts.append((match.group(1), time.monotonic()))
    end = time.monotonic()
    if proc.returncode != 0:
        print(f"pipeline_time: dvc repro failed (exit {proc.returncode}); nothing written", file=sys.stderr)
        return 1
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # kB on Linux
    ends = [t for _, t in starts[1:]] + [end]
    rows = [dict(stage=stage, seconds=stop - start) for (stage, start), stop in zip(starts, ends, strict=True)]
    rows.append(dict(stage="total", seconds=end - begin))
    rows.append(dict(stage="peak_rss_gb (largest process)", seconds=peak_gb))
    table = Table(["stage", "seconds"], rows, floats=dict(seconds=".1f"))
    for suffix in ("csv", "md"):
        table.write(args.out.with_suffix(f".{suffix}"))
    minutes = (end - begin) / 60
    print(f"dvc repro {args.dvc_args}: {minutes:.1f} min on {platform.processor() or platform.machine()}, "
          f"peak RSS {peak_gb:.2f} GB (budget {args.budget_min:g} min)")  # fmt: skip
    return 0 if minutes <= args.budget_min else 1


if __name__ == "__main__":
    sys.exit(main())
