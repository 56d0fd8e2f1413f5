"""The ``repnext`` command line (also ``python -m repnext``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from .registry import create_model, list_models
from .tables import FORMATS, Table


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _models(names: Sequence[str]) -> list[str]:
    available = list_models()
    for name in names:
        if name not in available:
            raise SystemExit(f"repnext: unknown model {name!r}; available: {', '.join(available)}")
    return list(names) or available


def _emit(table: Table, fmt: str, output: str | None) -> None:
    """Print ``table`` as ``fmt``, or write it to ``output`` in the format its suffix names."""
    if output:
        table.write(output)
    else:
        sys.stdout.write(table.render(fmt))


def cmd_list(args: argparse.Namespace) -> None:
    for name in list_models():
        print(name)


def cmd_verify(args: argparse.Namespace) -> None:
    from .analysis.equivalence import check_reparameterization, randomize_batchnorm

    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    rows = []
    for name in _models(args.models + args.more_models):
        torch.manual_seed(args.seed)
        model = randomize_batchnorm(create_model(name), seed=args.seed).to(dtype).eval()
        inputs = torch.randn(
            args.batch_size, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(args.seed)
        ).to(dtype)
        for single_branch in (False, True):
            agreement = check_reparameterization(model, inputs, single_branch=single_branch)
            rows.append(
                dict(
                    model=name,
                    form="single_branch" if single_branch else "deploy",
                    dtype=args.dtype,
                    resolution=args.resolution,
                    max_abs_err=agreement.max_abs,
                    max_rel_err=agreement.max_rel,
                    passed=agreement.max_rel <= args.tolerance,
                )
            )
    table = Table(
        ["model", "form", "dtype", "resolution", "max_abs_err", "max_rel_err", "passed"],
        rows,
        floats=dict(max_abs_err=".0e", max_rel_err=".0e"),
        sort_by=("model", "form"),
    )
    _emit(table, args.format, args.output)
    if not all(row["passed"] for row in rows):
        raise SystemExit(f"repnext verify: some fused models differ by more than {args.tolerance:g} (relative)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repnext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the registered model variants").set_defaults(func=cmd_list)

    verify = sub.add_parser("verify", help="check fused == training form with random BatchNorm statistics")
    verify.add_argument("models", nargs="*", help="variants (default: all)")
    verify.add_argument("--models", nargs="+", dest="more_models", default=[], help="more variants (for DVC)")
    verify.add_argument("--resolution", type=_positive, default=224)
    verify.add_argument("--batch-size", type=_positive, default=2)
    verify.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    verify.add_argument("--tolerance", type=float, default=1e-9, help="largest relative error that passes")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--format", choices=FORMATS, default="md")
    verify.add_argument(
        "-o",
        "--output",
        help="write here instead of stdout; the suffix (.csv/.md/.tex/.json) picks the format",
    )
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
