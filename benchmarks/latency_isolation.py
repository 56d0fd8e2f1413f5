"""Acceptance check of the latency protocol (issue 16); run it on an otherwise idle machine.

For every backend it times one model alone (a run with only that backend), then all backends in one mixed
run, and prints per backend the two medians, their ratio and IQR / median. It passes when every mixed
median is within 10% of the alone one and every IQR / median is at most 10%; it exits 1 otherwise.
A benchmark script, not a test: its verdict depends on the machine being idle.

    python benchmarks/latency_isolation.py                       # fused RepNeXt-M1, 224x224, 2 threads
    python benchmarks/latency_isolation.py --model repnext_m0 --resolution 32 --rounds 3   # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys

from repnext.analysis.latency import BACKENDS, benchmark, describe_peak, missing_requirement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repnext_m1")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backend", dest="backends", action="append", help="default: every installed one but compile")
    parser.add_argument("--tolerance", type=float, default=0.10, help="largest |mixed / alone - 1| and IQR / median")
    args = parser.parse_args(argv)
    backends = args.backends or [b for b in BACKENDS if b != "compile" and not missing_requirement(b)]
    options = dict(forms=("fused",), resolution=args.resolution, threads=args.threads, rounds=args.rounds)

    def medians(result) -> dict[str, tuple[float, float]]:
        return {r["backend"]: (r["median_ms"], r["iqr_ms"]) for r in result.latency.rows if r["status"] == "ok"}

    alone = {
        b: medians(benchmark([args.model], backends=[b], peak_backends=[], gemm_size=256, **options))[b]
        for b in backends
    }  # the peak is measured once, in the mixed run
    mixed_result = benchmark([args.model], backends=backends, **options)
    print(describe_peak(mixed_result, args.threads))
    mixed = medians(mixed_result)
    failed = False
    print("| backend | alone ms | mixed ms | mixed / alone | IQR / median (mixed) |")
    print("| --- | --- | --- | --- | --- |")
    for backend in backends:
        (a, _), (m, iqr) = alone[backend], mixed[backend]
        ok = abs(m / a - 1) <= args.tolerance and iqr / m <= args.tolerance
        failed |= not ok
        print(f"| {backend} | {a:.2f} | {m:.2f} | {m / a:.3f} | {iqr / m:.3f} |{'' if ok else ' FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
