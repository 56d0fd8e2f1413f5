"""Check a stage's ``params.yaml`` section against its notebook's parameters cell, before the stage runs.

Every parameter of a stage notebook says what it accepts in its comment, e.g. ``stage = 0  # stage``, where the
first words (up to a ``:``) name a kind of :data:`KINDS`. :func:`check_section` checks each value of the section
against its kind, with the whole section as context (a ``stage`` is an index into the section's ``model``), and
raises ``ValueError`` with one line naming ``section.key``, the value and what is allowed. The pipeline runs it in
a check stage ahead of each notebook stage, so a bad edit stops before DVC deletes the stage's outputs.

The sections that commands read rather than notebooks (``dataset``, the ``training`` options and ``experiments``
of ``train-experiments``, ``publish``) are checked by :func:`check_command_section` against what those commands
accept, in check stages of their own.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

DTYPES = ("float16", "bfloat16", "float32", "float64")
Check = Callable[[object, Mapping[str, object]], str | None]  # the problem with a value, or None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value, _):
    return None if _is_int(value) and value > 0 else "a positive integer"


def _non_negative_int(value, _):
    return None if _is_int(value) and value >= 0 else "a non-negative integer"


def _positive_number(value, _):
    return None if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else "a positive number"


def _fraction(value, _):
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1
    return None if ok else "a number in (0, 1]"


def _list_of(item: Check, what: str) -> Check:
    def check(value, section):
        if not isinstance(value, list) or not value:
            return f"a non-empty list of {what}"
        for index, element in enumerate(value):
            problem = item(element, section)
            if problem:
                return f"a non-empty list of {what}; item {index} ({element!r}) is not {problem}"
        return None

    return check


def _choice(choices: Callable[[], list[str]], what: str) -> Check:
    def check(value, _):
        options = choices()
        return None if isinstance(value, str) and value in options else f"{what}: one of {', '.join(options)}"

    return check


def _variants() -> list[str]:
    from .registry import list_models

    return list_models()


def _timm_model(value, _):
    import timm

    return None if isinstance(value, str) and timm.is_model(value) else "a model name timm knows"


def _section_models(section: Mapping[str, object]) -> list[str]:
    """The registered variants a section names in ``model`` or ``models`` (``[model, weights]`` pairs too)."""
    names = [section.get("model")] + [m[0] if isinstance(m, list) and m else m for m in section.get("models") or []]
    return [name for name in names if isinstance(name, str) and name in _variants()]


@functools.cache
def _blocks_per_stage(name: str) -> tuple[int, ...]:
    """How many blocks each stage of variant ``name`` has (built once per name: stage and block share it)."""
    from .registry import create_model

    stages = getattr(create_model(name), "stages", [])
    return tuple(len(getattr(stage, "blocks", stage)) for stage in stages)


def _stage(value, section):
    counts = {name: len(_blocks_per_stage(name)) for name in _section_models(section)}
    fewest = min(counts.values(), default=None)
    if not _is_int(value) or value < 0 or (fewest is not None and value >= fewest):
        bound = f" of {', '.join(counts)} (0 to {fewest - 1})" if fewest else ""
        return f"a stage index{bound}"
    return None


def _block(value, section):
    model, stage = section.get("model"), section.get("stage")
    blocks = _blocks_per_stage(model) if isinstance(model, str) and model in _variants() else ()
    if not _is_int(stage) or not 0 <= stage < len(blocks):  # an unknown model or stage is named by its own check
        return None if _is_int(value) and value >= 0 else "a block index"
    if not _is_int(value) or not 0 <= value < blocks[stage]:
        return f"a block index of stage {stage} of {model} (0 to {blocks[stage] - 1})"
    return None


def _pipeline_outputs() -> set[str]:
    """Paths that a stage of ``dvc.yaml`` writes: DVC runs that stage first, so they need not exist yet."""
    import yaml

    path = Path("dvc.yaml")
    stages = yaml.safe_load(path.read_text(encoding="utf-8")).get("stages", {}) if path.is_file() else {}
    bodies = [body.get("do", body) for body in stages.values() if isinstance(body, dict)]
    return {next(iter(o)) if isinstance(o, dict) else o for body in bodies for o in body.get("outs", [])}


def _input_file(value, _):
    ok = isinstance(value, str) and (Path(value).is_file() or value in _pipeline_outputs())
    return None if ok else "an existing file"


def _input_dir(value, _):
    ok = isinstance(value, str) and (Path(value).is_dir() or value in _pipeline_outputs())
    return None if ok else "an existing folder"


def _output(value, _):
    return None if isinstance(value, str) and value.strip() else "a non-empty path"


def _regex(value, _):
    try:
        re.compile(value)
    except (re.error, TypeError):
        return "a regular expression"
    return None


def _string(value, _):
    return None if isinstance(value, str) else "a string"


def _bool(value, _):
    return None if isinstance(value, bool) else "true or false"


def _weights(value, _):
    from .weights import is_url

    if value is None or value == "pretrained" or (isinstance(value, str) and value.startswith("hf-hub:")):
        return None
    if isinstance(value, str) and (is_url(value) or Path(value).is_file() or value in _pipeline_outputs()):
        return None
    return 'null (random), "pretrained", "hf-hub:ID", a URL or an existing checkpoint file'


def _image(value, _):
    from .analysis.features import ImageError, load_image

    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return None  # fetched when the stage runs
    try:
        load_image(value)
    except (ImageError, TypeError):
        return 'an image: "skimage:NAME", a URL or an existing image file'
    return None


def _model_with_weights(value, section):
    ok = isinstance(value, list) and len(value) == 2 and not _choice(_variants, "")(value[0], section)
    return None if ok and _weights(value[1], section) is None else "a [model, checkpoint or null] pair"


def _size(value, _):
    ok = isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)
    return None if ok else "an [H, W] pair of positive integers"


def _optional(check: Check, what: str) -> Check:
    return lambda value, section: None if value is None or not check(value, section) else f"null or {what}"


def _false_or_positive_int(value, _):
    return None if value is False or (_is_int(value) and value > 0) else "false or a positive integer"


def _backends() -> list[str]:
    from .analysis.latency import BACKENDS

    return list(BACKENDS)


def _backend_list(value, section):
    allowed = _backends()
    ok = isinstance(value, list) and value and all(isinstance(v, str) and v in allowed for v in value)
    return None if ok else f"a non-empty list of backends ({', '.join(allowed)})"


def _profiled_backends(value, section):
    """Runtimes with a per-layer profiler, each one the section also times, on the fused form."""
    from .analysis.latency.backends import ONNX_BACKENDS

    timed = [b for b in section.get("backends") or [] if b in ONNX_BACKENDS]
    ok = isinstance(value, list) and value and all(isinstance(v, str) and v in timed for v in value)
    if ok and "fused" in (section.get("forms") or ["fused"]):
        return None
    named = ", ".join(timed) or "none timed"
    return f"a non-empty list of timed backends that have a profiler ({named}), with the fused form timed"


def _measured_models(value, section):
    """Models the section measures: its ``models`` and ``peers``."""
    measured = [*(section.get("models") or []), *(section.get("peers") or [])]
    ok = isinstance(value, list) and value and all(isinstance(v, str) and v in measured for v in value)
    return None if ok else "a non-empty list of the section's models and peers"


def _form_list(value, _):
    from .analysis.latency import FORMS

    ok = isinstance(value, list) and value and all(isinstance(v, str) and v in FORMS for v in value)
    return None if ok else f"a non-empty list of forms ({', '.join(FORMS)})"


def _builtin_dataset(value, _):
    from .datasets import BUILTIN_DATASETS, BUILTIN_PREFIX

    names = [f"{BUILTIN_PREFIX}{name}" for name in BUILTIN_DATASETS]
    return None if value in names else f"a built-in dataset: one of {', '.join(names)}"


KINDS: dict[str, Check] = {
    "model": _choice(_variants, "a registered variant"),
    "models": _list_of(_choice(_variants, "a registered variant"), "registered variants"),
    "models with weights": _list_of(_model_with_weights, "[model, checkpoint or null] pairs"),
    "timm models": _list_of(_timm_model, "model names timm knows"),
    "positive int": _positive_int,
    "non-negative int": _non_negative_int,
    "positive number": _positive_number,
    "fraction": _fraction,
    "positive ints": _list_of(_positive_int, "positive integers"),
    "non-negative ints": _list_of(_non_negative_int, "non-negative integers"),
    "size": _size,
    "sizes": _list_of(_size, "[H, W] pairs of positive integers"),
    "stage": _stage,
    "block": _block,
    "dtypes": _list_of(_choice(lambda: list(DTYPES), "a dtype"), f"dtypes ({', '.join(DTYPES)})"),
    "devices": _list_of(_choice(lambda: ["cpu", "cuda"], "a device"), "devices (cpu, cuda)"),
    "backends": _backend_list,
    "profiled backends": _profiled_backends,
    "measured models": _measured_models,
    "forms": _form_list,
    "input file": _input_file,
    "input file or null": _optional(_input_file, "an existing file"),
    "input dir": _input_dir,
    "output": _output,
    "regex": _regex,
    "string": _string,
    "strings": _list_of(_string, "strings"),
    "strings or null": _optional(_list_of(_string, "strings"), "a non-empty list of strings"),
    "bool": _bool,
    "false or positive int": _false_or_positive_int,
    "weights": _weights,
    "image": _image,
    "builtin dataset": _builtin_dataset,
}


def declared_kinds(notebook: str | os.PathLike, required: bool = True) -> dict[str, str]:
    """``{parameter: kind}`` from the comments of ``notebook``'s parameters cell; ``ValueError`` if one has none.

    With ``required=False`` a notebook that declares no kind at all (one of your own) gives ``{}``.
    """
    import papermill

    declared_all = papermill.inspect_notebook(os.fspath(notebook))
    if not required and not any(d["help"].split(":")[0].strip() in KINDS for d in declared_all.values()):
        return {}
    kinds = {}
    for name, declared in declared_all.items():
        kind = declared["help"].split(":")[0].strip()
        if kind not in KINDS:
            raise ValueError(f"{notebook}: parameter {name!r} declares no known kind (comment {declared['help']!r}; "
                             f"kinds: {', '.join(KINDS)})")  # fmt: skip
        kinds[name] = kind
    return kinds


def check_section(
    notebook: str | os.PathLike, section: Mapping[str, object], where: str, required: bool = True
) -> None:
    """Raise ``ValueError`` (one line: ``where.key: ...``) if ``section`` does not fit ``notebook``'s parameters.

    ``required=False`` lets a notebook that declares no kinds through unchecked (``repnext notebook`` on your own).
    """
    kinds = declared_kinds(notebook, required)
    if kinds or required:
        _check_kinds(kinds, section, where, f"a parameter of {notebook}")


def _check_kinds(kinds: Mapping[str, str], section: Mapping[str, object], where: str, owner: str) -> None:
    for key, value in section.items():
        if key not in kinds:
            raise ValueError(f"{where}.{key}: not {owner} (its parameters: {', '.join(kinds)})")
        problem = KINDS[kinds[key]](value, section)
        if problem:
            raise ValueError(f"{where}.{key}: got {value!r}; expected {problem}")


DATASET_KINDS = {
    "name": "builtin dataset",
    "root": "output",
    "size": "positive int",
    "train_per_class": "positive int",
    "val_per_class": "positive int",
    "seed": "non-negative int",
}


def _check_dataset(params: Mapping[str, object], section: str, params_file: str) -> None:
    _check_kinds(DATASET_KINDS, params[section], f"{params_file}: {section}", "an option of repnext dataset")


def _type_problem(value: object, hint: object) -> str | None:
    """What ``value`` should be for the annotation ``hint`` (``int``, ``float | None``...), or None if it fits."""
    import types
    import typing

    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    fits = {bool: _bool(value, None) is None, int: _is_int(value), str: isinstance(value, str),
            float: isinstance(value, int | float) and not isinstance(value, bool)}  # fmt: skip
    if any(fits.get(kind, True) for kind in allowed if kind is not type(None)):
        return None
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(["null"] * (type(None) in allowed) + [names[k] for k in allowed if k in names])


def _check_training(training: Mapping[str, object], where: str) -> None:
    """The ``training`` options: each one ``repnext train`` takes, of its type, within the range it checks."""
    import typing

    from .experiments import shared_options
    from .train import TrainConfig

    options, hints = shared_options(), typing.get_type_hints(TrainConfig)
    for key, value in training.items():
        if key not in options:
            raise ValueError(f"{where}.{key}: not an option of repnext train (its options: {', '.join(options)})")
        problem = _type_problem(value, hints[key])
        if problem:
            raise ValueError(f"{where}.{key}: got {value!r}; expected {problem}")
    try:
        TrainConfig("", "", "", **training).check()
    except ValueError as error:
        option, _, problem = str(error).partition(": ")
        raise ValueError(f"{where}.{option.removeprefix('--').replace('-', '_')}: {problem}") from None


def _check_experiments(params: Mapping[str, object], section: str, params_file: str) -> None:
    """The shared ``training`` options, then each run: a registered variant that builds with its ``model_kwargs``
    and runs a forward pass at ``training.img_size`` (an even kernel size builds, then fails on the residual)."""
    import torch

    from .experiments import ExperimentError, train_commands
    from .registry import create_model
    from .train import TrainConfig, parse_model_kwargs

    _check_training(params["training"], f"{params_file}: training")
    experiments, where = params[section], f"{params_file}: {section}"
    try:  # the command's own argument checks (each run's keys, the switches), as the stage will make them
        train_commands(experiments, params["training"], "", "", where=params_file)
    except ExperimentError as error:
        raise ValueError(str(error)) from None
    side = params["training"].get("img_size", TrainConfig("", "", "").img_size)
    for name, item in experiments.items():
        problem = KINDS["model"](item["model"], item)
        if problem:
            raise ValueError(f"{where}.{name}.model: got {item['model']!r}; expected {problem}")
        text = item.get("model_kwargs", "")
        try:
            model = create_model(item["model"], **parse_model_kwargs(str(text).split())).eval()
            with torch.no_grad():
                model(torch.zeros(1, 3, side, side))
        except Exception as error:  # whatever the constructor or the forward pass raises, said in one line
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{where}.{name}.model_kwargs: got {text!r}; {item['model']} does not build and run "
                             f"at {side}x{side} with it ({reason})") from None  # fmt: skip


def _check_publish(params: Mapping[str, object], section: str, params_file: str) -> None:
    """``experiment`` is a run of ``experiments_with_weights`` (the one with a checkpoint), of variant ``model``; the
    ``training`` options (the evaluate stage reads its ``img_size`` and ``threads``)."""
    publish, runs, where = params[section], params["experiments_with_weights"], f"{params_file}: {section}"
    for key in publish:
        if key not in ("experiment", "model", "min_agreement"):
            raise ValueError(f"{where}.{key}: not a parameter of the evaluate and publish stages "
                             "(its parameters: experiment, model, min_agreement)")  # fmt: skip
    experiment, model = publish.get("experiment"), publish.get("model")
    if experiment not in runs:
        raise ValueError(f"{where}.experiment: got {experiment!r}; expected a run of experiments_with_weights "
                         f"(the runs whose checkpoints are kept): one of {', '.join(runs)}")  # fmt: skip
    expected = runs[experiment].get("model") if isinstance(runs[experiment], Mapping) else None
    if model != expected:
        raise ValueError(f"{where}.model: got {model!r}; expected {expected!r}, the variant run {experiment} trains")
    agreement = publish.get("min_agreement")
    if not (isinstance(agreement, int | float) and not isinstance(agreement, bool) and 0 <= agreement <= 100):
        raise ValueError(f"{where}.min_agreement: got {agreement!r}; expected a percentage from 0 to 100")
    _check_training(params["training"], f"{params_file}: training")


# The other sections a command's check reads besides its own.
COMMAND_SECTIONS = {"train-experiments": ("training",), "publish": ("experiments_with_weights", "training")}
# The commands whose params.yaml section a check stage checks: command -> its check (params, section, params file).
COMMAND_CHECKS: dict[str, Callable[[Mapping[str, object], str, str], None]] = {
    "dataset": _check_dataset,
    "train-experiments": _check_experiments,
    "publish": _check_publish,
}


def check_command_section(command: str, params_file: str, section: str) -> dict:
    """``section`` of ``params_file``, checked against what ``command`` accepts; ``ValueError`` (one line:
    ``PARAMS_FILE: section.key: ...``) if it does not fit. Checks that need another section (the ``training``
    options of ``train-experiments``, the runs ``publish`` picks from) read it from the same file."""
    from .pipeline import load_section

    if command not in COMMAND_CHECKS:
        raise ValueError(f"{command}: neither a notebook (.ipynb) nor a command with a parameter check "
                         f"({', '.join(COMMAND_CHECKS)})")  # fmt: skip
    needed = {section, *COMMAND_SECTIONS.get(command, ())}
    params = {name: load_section(params_file, name) for name in sorted(needed)}
    COMMAND_CHECKS[command](params, section, params_file)
    return params[section]
