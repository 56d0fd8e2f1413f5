"""The ``repnext`` command line (also ``python -m repnext``)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence

from . import progress
from .export import EXPORT_FORMATS
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
                          args.batch_size, args.seed, progress.wanted(args.progress))  # fmt: skip
    _emit(table, args.format, args.output)
    if not all(row["passed"] for row in table.rows):
        raise SystemExit("repnext verify: some fused models differ from their training form beyond tolerance")


def cmd_stats(args: argparse.Namespace) -> None:
    from .analysis.stats import model_stats

    forms = tuple(args.forms or ["deploy"])
    try:
        table = model_stats(_models(args.models), args.resolution, forms, progress.wanted(args.progress))
    except ValueError as error:  # e.g. a resolution whose activations cannot fit in memory
        raise SystemExit(f"repnext stats: {error}") from None
    _emit(table, args.format, args.output)


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from .analysis.latency import BenchmarkError, benchmark, describe_peak

    args.threads = args.threads or torch.get_num_threads()
    try:
        result = benchmark(
            args.models, args.forms or ["unfused", "fused"], args.backends or ["eager"], args.resolution,
            args.threads, args.device, args.rounds, args.warmup, args.batch_size, min_rounds=args.min_rounds,
            block_ms=args.block_ms, gemm_size=args.gemm_size, dwconv_side=args.dwconv_side, weights=args.weights,
            progress=progress.wanted(args.progress), profile_backends=args.profile or (),
        )  # fmt: skip
    except BenchmarkError as error:
        raise SystemExit(f"repnext bench: {error}") from None
    print(describe_peak(result, args.threads), file=sys.stderr)
    _emit(result.latency, args.format, args.output)
    if result.throughput is not None:
        _emit(result.throughput, args.format, args.throughput_output)
    if result.profiles is not None:
        _emit(result.profiles, args.format, args.profile_output)


def cmd_export(args: argparse.Namespace) -> None:
    from .checkpoint import CheckpointError
    from .export import ExportError, export_model
    from .weights import in_form, load_weights

    name = _models([args.model])[0]
    try:
        model, weights = load_weights(name, args.weights, num_classes=args.num_classes)
        if weights.form == "torchscript":
            raise ExportError(f"{args.weights}: upstream's scripted fused model runs as is; it cannot be re-exported")
        model = in_form(model, weights, "train" if args.unfused else "fused", args.weights)
        report = export_model(model, args.format, args.output, args.resolution, args.tolerance)
    except (CheckpointError, ExportError) as error:
        raise SystemExit(f"repnext export: {error}") from None
    print(f"wrote {report.path} ({report.format}); {report.checked}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_model
    from .train import parse_model_kwargs

    suffix = os.path.splitext(args.output or "")[1].lstrip(".")
    if args.output and {"tex": "latex"}.get(suffix, suffix) not in FORMATS:
        raise SystemExit(
            f"repnext eval: -o: {args.output}: unknown table format {suffix!r}; use .csv, .md, .tex, .json"
        )
    try:
        table = evaluate_model(
            _models([args.model])[0], args.data, args.split, args.weights, args.form, args.batch_size,
            args.img_size, args.crop_pct, args.interpolation, parse_model_kwargs(args.model_kwargs),
            args.threads, args.device, args.workers, progress.wanted(args.progress),
        )  # fmt: skip
    except ValueError as error:  # DatasetError, WeightsError, a bad option: one line naming it
        raise SystemExit(f"repnext eval: {error}") from None
    agreement = table.rows[-1]["top1_agreement"]
    if args.min_agreement is not None and (agreement is None or agreement < args.min_agreement):
        raise SystemExit(f"repnext eval: --min-agreement {args.min_agreement}: the fused and training forms agree "
                         f"on {agreement if agreement is not None else 'no'}% of images (use --both)")  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process prints the gathered totals
        _emit(table, args.format, args.output)


def cmd_publish(args: argparse.Namespace) -> None:
    from .publish import publish

    try:
        written = publish(args.checkpoint, _models([args.model])[0], args.output, args.distillation, args.fused,
                          args.epochs, args.log, args.eval, args.latency)  # fmt: skip
    except ValueError as error:  # CheckpointError, PublishError: one line naming the file
        raise SystemExit(f"repnext publish: {error}") from None
    for path in written:
        print(path)


def cmd_logs(args: argparse.Namespace) -> None:
    import warnings

    from .analysis.logs import DEFAULT_PATTERNS, LogWarning, compile_group_by, read_logs, summarize

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LogWarning)
        try:
            group_by = compile_group_by(args.group_by, "--group-by")
            runs = read_logs(args.paths, args.patterns or DEFAULT_PATTERNS, group_by)
        except (OSError, ValueError) as error:  # LogFormatError is a ValueError naming the file
            raise SystemExit(f"repnext logs: {error}") from None
    for warning in caught:
        print(f"repnext logs: warning: {warning.message}", file=sys.stderr)
    _emit(summarize(runs), args.format, args.output)


def cmd_features(args: argparse.Namespace) -> None:
    from .analysis.features import compute_feature_maps, describe_predictions, write_feature_maps

    try:
        maps = compute_feature_maps(args.model, args.weights, args.image, args.stage, args.block, args.input_size)
        written = write_feature_maps(maps, args.output, args.branches, args.channel_grid)
    except ValueError as error:  # bad image, weights, checkpoint or setting: one line naming it
        raise SystemExit(f"repnext features: {error}") from None
    capture = maps.capture
    print(describe_predictions(maps))
    print(f"{capture.mixer}: max |{capture.combine} of branches - output| = {capture.branch_error:.1e}, "
          f"max |fused - output| = {capture.fused_error:.1e}")  # fmt: skip
    for path in written:
        print(path)


def cmd_render(args: argparse.Namespace) -> None:
    from .render import RenderError, check_page, render_notebook_html

    try:
        page = render_notebook_html(args.source, args.output)
    except RenderError as error:
        raise SystemExit(f"repnext render: {error}") from None
    if args.check or args.screenshot:
        try:
            problems = check_page(page, screenshot=args.screenshot)
        except FileNotFoundError as error:
            raise SystemExit(f"repnext render: --check: {error}") from None
        if problems:
            raise SystemExit(f"repnext render: {page}: " + "; ".join(problems))


def cmd_report(args: argparse.Namespace) -> None:
    from .render import check_page
    from .report import ReportError, render_report

    try:
        page = render_report(args.output)
    except ReportError as error:
        raise SystemExit(f"repnext report: {error}") from None
    if args.check or args.screenshot:
        try:
            problems = check_page(page, screenshot=args.screenshot, expect_math=False, expect_checks=False)
        except FileNotFoundError as error:
            raise SystemExit(f"repnext report: --check: {error}") from None
        if problems:
            raise SystemExit(f"repnext report: {page}: " + "; ".join(problems))
    print(page)


def cmd_train(args: argparse.Namespace) -> None:
    from .train import config_from_args, train

    try:
        train(config_from_args(args))
    except (ValueError, FloatingPointError) as error:  # includes DatasetError and CheckpointError
        raise SystemExit(f"repnext train: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # the message naming the checkpoint to resume from is already printed


def cmd_train_experiments(args: argparse.Namespace) -> None:
    from .experiments import ExperimentError, default_jobs, run_experiments, train_commands
    from .pipeline import StageError, load_section

    try:
        experiments = load_section(args.params, args.section)
        training = load_section(args.params, args.training)
        commands = train_commands(
            experiments, training, args.data, args.out, args.checkpoint_root, args.params, args.weights_only
        )
        run_experiments(commands, args.jobs or default_jobs(training), args.out, args.checkpoint_root)
    except (StageError, ExperimentError) as error:
        raise SystemExit(f"repnext train-experiments: {error}") from None


def cmd_dataset(args: argparse.Namespace) -> None:
    from .datasets import materialize_dataset

    options = dict(size=args.size, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                   seed=args.seed)  # fmt: skip
    try:
        root = materialize_dataset(args.name, args.root, **{k: v for k, v in options.items() if v is not None})
    except ValueError as error:
        raise SystemExit(f"repnext dataset: {error}") from None
    print(root)


def _checked_section(command: str, notebook: str, args: argparse.Namespace, required: bool = True) -> dict:
    """``--params``'s ``--section``, checked against ``notebook``'s parameters cell; one line on a bad value."""
    from .param_checks import check_section
    from .pipeline import StageError, load_section

    try:
        section = load_section(args.params, args.section)
        check_section(notebook, section, f"{args.params}: {args.section}", required)
    except (StageError, ValueError) as error:
        raise SystemExit(f"repnext {command}: {error}") from None
    return section


def cmd_notebook(args: argparse.Namespace) -> None:
    from .pipeline import StageError, run_notebook

    section = _checked_section("notebook", args.source, args, required=False)
    try:
        run_notebook(args.source, args.output, section)
    except StageError as error:
        raise SystemExit(f"repnext notebook: {error}") from None


def cmd_check_params(args: argparse.Namespace) -> None:
    from .io import write_text
    from .param_checks import check_command_section
    from .pipeline import StageError

    if args.target.endswith(".ipynb"):
        section = _checked_section("check-params", args.target, args)
    else:
        try:
            section = check_command_section(args.target, args.params, args.section)
        except (StageError, ValueError) as error:
            raise SystemExit(f"repnext check-params: {error}") from None
    if args.output:
        write_text(args.output, json.dumps(section, indent=2, sort_keys=True) + "\n")


def build_parser() -> argparse.ArgumentParser:
    from .train import add_arguments as add_train_arguments

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
    progress.add_arguments(verify)
    verify.set_defaults(func=cmd_verify)

    stats = sub.add_parser("stats", help="parameters and fvcore MACs (1 MAC = 1 fvcore flop), beside published")
    stats.add_argument("models", nargs="*", help="variants (default: all)")
    stats.add_argument("--resolution", type=_positive, default=224)
    forms = stats.add_mutually_exclusive_group()
    forms.add_argument("--fused", dest="forms", action="store_const", const=["deploy"], help="deploy form (default)")
    forms.add_argument("--unfused", dest="forms", action="store_const", const=["train"], help="training form")
    forms.add_argument("--form", dest="forms", action="append",
                       choices=("train", "deploy", "single_branch", "two_branch"))  # fmt: skip
    stats.add_argument("--format", choices=FORMATS, default="md")
    stats.add_argument("-o", "--output", help="write here instead of stdout; the suffix picks the format")
    progress.add_arguments(stats)
    stats.set_defaults(func=cmd_stats)

    bench = sub.add_parser("bench", help="batch-1 latency (and throughput) of training/fused forms on backends")
    bench.add_argument("models", nargs="+", help="repnext variants or any timm model (e.g. repvit_m1_0)")
    forms = bench.add_mutually_exclusive_group()
    forms.add_argument("--fused", dest="forms", action="store_const", const=["fused"], help="fused form only")
    forms.add_argument("--unfused", dest="forms", action="store_const", const=["unfused"], help="training form only")
    forms.add_argument("--form", dest="forms", action="append",
                       choices=("unfused", "fused", "single_branch", "two_branch"),
                       help="repeatable; single_branch / two_branch: RepNeXt's fused form with one kxk conv per "
                            "mixer / one square conv beside the separable one")  # fmt: skip
    bench.add_argument("--backend", dest="backends", action="append", metavar="NAME", help="repeatable; "
                       "eager (default), channels_last, torchscript, onnxruntime, openvino, compile")  # fmt: skip
    bench.add_argument("--weights", help="for repnext variants: pretrained, hf-hub:ID, a checkpoint or fused "
                       "TorchScript .pt (default: random; latency does not depend on the values)")  # fmt: skip
    bench.add_argument("--batch-size", type=_positive, default=1, help="> 1 also measures throughput at this batch")
    bench.add_argument("--resolution", type=_positive, default=224)
    bench.add_argument("--threads", type=_positive, help="intra-op threads (default: torch's)")
    bench.add_argument("--device", default="cpu", help="cpu or cuda")
    bench.add_argument("--rounds", type=_positive, default=10, help="most rounds of timed blocks")
    bench.add_argument("--min-rounds", type=_positive, help="stop a configuration after this many rounds once its "
                       "IQR is within 5%% of its median (default: always --rounds)")  # fmt: skip
    bench.add_argument("--block-ms", type=float, default=20.0, help="length of one timed block (calls in a row)")
    bench.add_argument("--gemm-size", type=_positive, default=2048, help="side of the reference float32 GEMM")
    bench.add_argument("--dwconv-side", type=_positive, default=28, help="map side of the reference 3x3, 7x7 and "
                       "11x11 depthwise convs (256 channels; 28 fits in a 2 MiB L2)")  # fmt: skip
    bench.add_argument("--profile", action="append", choices=("onnxruntime", "openvino"), metavar="BACKEND",
                       help="repeatable: also profile each fused model per layer kind with this timed runtime's "
                       "own profiler, against the roofline bound")  # fmt: skip
    bench.add_argument("--warmup", type=_positive, default=3, help="untimed calls per configuration first")
    bench.add_argument("--format", choices=FORMATS, default="md")
    bench.add_argument("-o", "--output", help="write the latency table here; the suffix picks the format")
    bench.add_argument("--throughput-output", help="write the throughput table here (with --batch-size > 1)")
    bench.add_argument("--profile-output", help="write the per-layer-kind profile table here (with --profile)")
    progress.add_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    export = sub.add_parser("export", help="export the fused model and verify the artifact against PyTorch")
    export.add_argument("model", help="a repnext variant")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    export.add_argument("-o", "--output", required=True, help="file to write (.onnx, .pt, .pt2, .xml + .bin, "
                        ".mlpackage)")  # fmt: skip
    export.add_argument("--weights", "--checkpoint", dest="weights", help="none (default), pretrained, "
                        "hf-hub:ID, a checkpoint or fused TorchScript .pt (path or URL)")  # fmt: skip
    export.add_argument("--num-classes", type=_positive, help="classifier size when the checkpoint is not ImageNet")
    export.add_argument("--resolution", type=_positive, default=224, help="input height and width")
    export.add_argument("--unfused", action="store_true", help="export the training form instead")
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest max-abs error that passes")
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser("eval", help="top-1/top-5/loss on an ImageFolder split; --both compares the forms")
    evaluate.add_argument("model", help="a repnext variant, e.g. repnext_m0")
    evaluate.add_argument("--data", required=True, help="ImageFolder root (ROOT/SPLIT/<class>/...) or builtin:photos")
    evaluate.add_argument("--split", default="val", help="split folder under --data (default: val)")
    evaluate.add_argument("--weights", help="none, pretrained, hf-hub:ID, a checkpoint or fused TorchScript .pt "
                          "(path or URL); default: untrained, seed 0")  # fmt: skip
    form = evaluate.add_mutually_exclusive_group()
    form.add_argument("--fused", dest="form", action="store_const", const="fused", default="train",
                      help="evaluate the re-parameterized form")  # fmt: skip
    form.add_argument("--both", dest="form", action="store_const", const="both",
                      help="both forms, and how they agree on every image")  # fmt: skip
    evaluate.add_argument(
        "--min-agreement",
        type=float,
        metavar="PCT",
        help="with --both: fail unless both forms give the same top-1 on at least PCT%% of images",
    )
    evaluate.add_argument("--batch-size", type=_positive, default=64)
    evaluate.add_argument("--img-size", type=_positive, help="input side (default: the model's data config)")
    evaluate.add_argument("--crop-pct", type=float, help="center-crop fraction (default: the model's data config)")
    evaluate.add_argument("--interpolation", help="resize interpolation (default: the model's data config)")
    evaluate.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                          help="model constructor arguments, e.g. distillation=True")  # fmt: skip
    evaluate.add_argument("--threads", type=_positive, help="torch intra-op threads (default: torch's choice)")
    evaluate.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    evaluate.add_argument("--workers", type=int, default=0, help="data-loading processes")
    progress.add_arguments(evaluate)
    evaluate.add_argument("--format", choices=FORMATS, default="md")
    evaluate.add_argument("-o", "--output", help="write here instead of stdout; the suffix picks the format")
    evaluate.set_defaults(func=cmd_eval)

    publish = sub.add_parser(
        "publish", help="upstream's release files of a checkpoint + a Hugging Face folder and card"
    )
    publish.add_argument("checkpoint", help="training checkpoint (repnext train's best.pth, or upstream's)")
    publish.add_argument("--model", required=True, help="the variant it was trained as")
    publish.add_argument("-o", "--output", required=True, help="folder to write (replaced atomically)")
    publish.add_argument(
        "--distillation", action="store_true", help="name files NAME_distill_... (else without_distill)"
    )
    publish.add_argument("--fused", action="store_true", help="also write the fused TorchScript NAME_..._fused.pt")
    publish.add_argument("--epochs", type=_positive, help="epoch count in the names (default: the checkpoint's)")
    publish.add_argument("--log", help="training log.txt (default: beside the checkpoint, or the run's --out)")
    publish.add_argument("--eval", help="a `repnext eval` CSV table whose top-1 the card reports")
    publish.add_argument("--latency", help="a `repnext bench` CSV table whose fused eager latency the card reports")
    publish.set_defaults(func=cmd_publish)

    logs = sub.add_parser("logs", help="one row per training run from DeiT, timm, MMCV or Swin-style logs")
    logs.add_argument("paths", nargs="+", metavar="PATH_OR_GLOB", help="log files, folders (searched with "
                      "--pattern) or globs such as 'logs/**/log.txt'")  # fmt: skip
    logs.add_argument("--group-by", metavar="REGEX", help="named groups of this regex, searched in each run's "
                      "name, become columns, e.g. '(?P<model>recnext_m\\d)_(?P<resolution>\\d+)x'")  # fmt: skip
    logs.add_argument("--pattern", dest="patterns", action="append", metavar="GLOB",
                      help="files to read inside a folder (repeatable; default: **/*.txt, **/*summary.csv, "
                      "**/*.json)")  # fmt: skip
    logs.add_argument("--format", choices=FORMATS, default="md")
    logs.add_argument("-o", "--output", help="write here instead of stdout; the suffix picks the format")
    logs.set_defaults(func=cmd_logs)

    features = sub.add_parser("features", help="feature maps of each token-mixer branch of one block (figures)")
    features.add_argument("model", help="variant, e.g. repnext_m1")
    features.add_argument("--image", default="skimage:chelsea",
                          help="path, http(s) URL or skimage:NAME (default: scikit-image's cat photo)")  # fmt: skip
    features.add_argument("--stage", type=int, default=0)
    features.add_argument("--block", type=int, default=1)
    features.add_argument("--weights", help="'pretrained' (released, needs network), a checkpoint path or URL "
                          "(default: untrained, seed 0)")  # fmt: skip
    features.add_argument("--branch", dest="branches", action="append", help="repeatable (default: all)")
    features.add_argument("--input-size", type=_positive, default=224)
    features.add_argument("--channel-grid", type=_positive, default=False, metavar="N",
                          help="also draw the first N channels of each branch")  # fmt: skip
    features.add_argument("-o", "--output", default="figures/feature_maps", help="folder (files go to DIR/MODEL/)")
    features.set_defaults(func=cmd_features)

    render = sub.add_parser("render", help="render an executed notebook as one offline HTML page (math as MathML)")
    render.add_argument("source", help="executed notebook, e.g. artifacts/notebooks/reparam_tutorial.ipynb")
    render.add_argument("output", help="HTML page to write, e.g. artifacts/tutorial/reparam_tutorial.html")
    render.add_argument("--check", action="store_true", help="then open the page in headless Chromium and check it")
    render.add_argument("--screenshot", help="with the check, save a PNG of the top of the page here")
    render.set_defaults(func=cmd_render)

    report = sub.add_parser("report", help="one offline HTML page of every figure and table, by pipeline stage")
    report.add_argument(
        "output", nargs="?", default="artifacts/report.html", help="page to write (default: %(default)s)"
    )
    report.add_argument("--check", action="store_true", help="then open the page in headless Chromium and check it")
    report.add_argument("--screenshot", help="with the check, save a PNG of the top of the page here")
    report.set_defaults(func=cmd_report)

    train = sub.add_parser("train", help="train a variant: DeiT log.txt, upstream checkpoints; multi-GPU via torchrun")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    runs = sub.add_parser("train-experiments", help="train every experiment of a params.yaml section, side by side")
    runs.add_argument("section", help="section of NAME: {model, model_kwargs} items, e.g. experiments")
    runs.add_argument("--data", required=True, help="ImageFolder root or builtin:NAME")
    runs.add_argument("--out", required=True, help="logs go to OUT/NAME/log.txt")
    runs.add_argument("--checkpoint-root", help="checkpoints go to ROOT/NAME/ (default: none are written)")
    runs.add_argument("--weights-only", action="store_true", help="with --checkpoint-root: each run's best.pth only, "
                      "without optimizer state (small enough to commit)")  # fmt: skip
    runs.add_argument("--params", default="params.yaml", help="YAML file holding the sections")
    runs.add_argument("--training", default="training", help="section of options shared by every run")
    runs.add_argument("--jobs", type=_positive, help="runs at once (default: CPU cores / training.threads)")
    runs.set_defaults(func=cmd_train_experiments)

    dataset = sub.add_parser("dataset", help="write a built-in offline dataset (builtin:photos) as an ImageFolder tree")
    dataset.add_argument("name", help="builtin:photos")
    dataset.add_argument("root", help="output folder, e.g. data/photos (replaced atomically)")
    dataset.add_argument("--size", type=_positive, help="image side in pixels (default: the dataset's)")
    dataset.add_argument("--train-per-class", type=_positive, help="default: the dataset's")
    dataset.add_argument("--val-per-class", type=_positive, help="default: the dataset's")
    dataset.add_argument("--seed", type=int, help="default: the dataset's")
    dataset.set_defaults(func=cmd_dataset)

    notebook = sub.add_parser("notebook", help="run a parameterized notebook with papermill (a pipeline stage)")
    notebook.add_argument("source", help="source notebook, e.g. notebooks/model_stats.ipynb")
    notebook.add_argument("output", help="executed copy, e.g. artifacts/notebooks/model_stats.ipynb")
    notebook.add_argument("--params", default="params.yaml", help="YAML file holding the parameters")
    notebook.add_argument("--section", required=True, help="dotted key of the parameters in --params")
    notebook.set_defaults(func=cmd_notebook)

    check = sub.add_parser("check-params", help="check a params.yaml section against what its stage accepts")
    check.add_argument("target", help="the stage's notebook (notebooks/feature_maps.ipynb) or command: "
                       "dataset, train-experiments (its section and training), publish")  # fmt: skip
    check.add_argument("--params", default="params.yaml", help="YAML file holding the parameters")
    check.add_argument("--section", required=True, help="dotted key of the parameters in --params")
    check.add_argument("-o", "--output", help="write the checked section here as JSON (the check stage's stamp)")
    check.set_defaults(func=cmd_check_params)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = error.filename or getattr(args, "output", None) or getattr(args, "out", None) or "the output"
        message = f"{where}: no space left on device (no file is left half-written)"
        raise SystemExit(f"repnext {args.command}: {message}") from None
