"""The ``repnext`` command line (also ``python -m repnext``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .registry import check_model_name, list_models
from .tables import FORMATS, Table


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _models(names: Sequence[str]) -> list[str]:
    """The named variants (all when none is named); an unknown name exits with the available ones."""
    try:
        return [check_model_name(name, "repnext") for name in names] or list_models()
    except ValueError as error:
        raise SystemExit(str(error)) from None


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
    from .analysis.equivalence import reparam_check

    dtypes = args.dtypes or ["float64", "float32"]
    tolerances = dict.fromkeys(dtypes, args.tolerance) if args.tolerance is not None else None
    resolutions = [(args.resolution, args.resolution)]
    table = reparam_check(_models(args.models + args.more_models), resolutions, dtypes, tolerances,
                          batch_size=args.batch_size, seed=args.seed)  # fmt: skip
    _emit(table, args.format, args.output)
    if not all(row["passed"] for row in table.rows):
        raise SystemExit("repnext verify: some fused models differ from their training form beyond tolerance")


def cmd_stats(args: argparse.Namespace) -> None:
    from .analysis.stats import model_stats

    forms = tuple(args.forms or ["deploy"])
    _emit(model_stats(_models(args.models), args.resolution, forms), args.format, args.output)


def cmd_notebook(args: argparse.Namespace) -> None:
    from .pipeline import StageError, load_section, run_notebook

    try:
        run_notebook(args.source, args.output, load_section(args.params, args.section))
    except StageError as error:
        raise SystemExit(f"repnext notebook: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repnext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the registered model variants").set_defaults(func=cmd_list)

    verify = sub.add_parser("verify", help="check fused == training form with random BatchNorm statistics")
    verify.add_argument("models", nargs="*", help="variants (default: all)")
    verify.add_argument("--models", nargs="+", dest="more_models", default=[], help="more variants (for DVC)")
    verify.add_argument("--resolution", type=_positive, default=224)
    verify.add_argument("--batch-size", type=_positive, default=2)
    verify.add_argument("--dtype", dest="dtypes", action="append", choices=("float64", "float32"),
                        help="repeatable (default: both)")  # fmt: skip
    verify.add_argument("--tolerance", type=float, help="largest relative error that passes "
                        "(default: 1e-9 for float64, 1e-4 for float32)")  # fmt: skip
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--format", choices=FORMATS, default="md")
    verify.add_argument(
        "-o",
        "--output",
        help="write here instead of stdout; the suffix (.csv/.md/.tex/.json) picks the format",
    )
    verify.set_defaults(func=cmd_verify)

    stats = sub.add_parser("stats", help="parameters and fvcore MACs (1 MAC = 1 fvcore flop), beside published")
    stats.add_argument("models", nargs="*", help="variants (default: all)")
    stats.add_argument("--resolution", type=_positive, default=224)
    forms = stats.add_mutually_exclusive_group()
    forms.add_argument("--fused", dest="forms", action="store_const", const=["deploy"], help="deploy form (default)")
    forms.add_argument("--unfused", dest="forms", action="store_const", const=["train"], help="training form")
    forms.add_argument("--form", dest="forms", action="append", choices=("train", "deploy", "single_branch"))
    stats.add_argument("--format", choices=FORMATS, default="md")
    stats.add_argument("-o", "--output", help="write here instead of stdout; the suffix picks the format")
    stats.set_defaults(func=cmd_stats)

    notebook = sub.add_parser("notebook", help="run a parameterized notebook with papermill (a pipeline stage)")
    notebook.add_argument("source", help="source notebook, e.g. notebooks/model_stats.ipynb")
    notebook.add_argument("output", help="executed copy, e.g. artifacts/notebooks/model_stats.ipynb")
    notebook.add_argument("--params", default="params.yaml", help="YAML file holding the parameters")
    notebook.add_argument("--section", required=True, help="dotted key of the parameters in --params")
    notebook.set_defaults(func=cmd_notebook)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
