"""One weights resolver for every command: a weights spec in, a model (and where its weights came from) out.

A spec is one of

* ``None`` / ``"none"``: random initialisation from a seed (the caller's random state is left alone);
* ``"pretrained"``: the released weights through timm (network needed);
* ``"hf-hub:ID"``: a Hugging Face repository's weights, e.g. ``hf-hub:suous/recnext_m1.dist_300e_in1k``;
* a file path, or an ``http(s)://`` / ``file://`` URL of one (downloaded once into torch.hub's cache):

  - a checkpoint (upstream ``{'model': state_dict}``, a training checkpoint of ``repnext train``, timm's
    ``state_dict``/``state_dict_ema``, or a plain state dict), read with ``weights_only=True``; a class
    count different from the model's is taken from the checkpoint;
  - a fused **TorchScript** ``.pt`` as upstream's ``publish.py --fused`` writes it (``torch.jit.script`` of
    the fused model). When its weights fit this package's fused form of the variant (deploy or
    single-branch), they are loaded into it (a Python module again); when they are upstream's fuse form
    (``replace_batchnorm`` keeps the BatchNorms after token mixers, so the parameter count is the
    papers'), the scripted model runs as is; a file of another variant is refused, naming it.

Every failure raises :class:`WeightsError` (a :class:`~repnext.checkpoint.CheckpointError`, so a
``ValueError``) with one line naming the spec or file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, check_state_dict, is_torchscript, load_checkpoint, read_checkpoint
from .checkpoint import read_state_dict as _read_state_dict
from .errors import one_line
from .registry import check_model_name, list_models

__all__ = ["HF_PREFIX", "Weights", "WeightsError", "fetch_file", "in_form", "load_torchscript", "load_weights"]

HF_PREFIX = "hf-hub:"
_URL_SCHEMES = ("http", "https", "file")
FORMS = ("train", "fused", "torchscript")


class WeightsError(CheckpointError):
    """Weights that cannot be found, read or fitted to the model; the message names them."""


@dataclass(frozen=True)
class Weights:
    """Where a model's weights came from.

    ``form``: ``"train"`` (the training form, re-parameterizable), ``"fused"`` (this package's fused
    form, from a TorchScript file) or ``"torchscript"`` (a scripted model run as is).
    """

    description: str  # e.g. "untrained weights (random init, seed 0)"
    trained: bool
    class_names: tuple[str, ...] | None  # index -> name, when known
    form: str = "train"


def in_form(model: nn.Module, weights: Weights, form: str, spec: str | os.PathLike | None) -> nn.Module:
    """``model``, as :func:`load_weights` returned it with ``weights``, in ``form``: ``"train"`` as loaded, or
    ``"fused"`` (a re-parameterized copy; the model itself when the file held a fused model). Asking a fused
    file for the training form raises :class:`WeightsError` naming ``spec``."""
    from .reparam import reparameterize

    if form not in ("train", "fused"):
        raise ValueError(f"unknown form {form!r}; choose train or fused")
    if weights.form == "train":
        return model if form == "train" else reparameterize(model.eval()).eval()  # new fused modules start in train()
    if form == "train":
        raise WeightsError(f"{os.fspath(spec)}: holds a fused model only; the training form is not in the file")
    return model


def is_url(text: str) -> bool:
    """Whether ``text`` is an ``http``, ``https`` or ``file`` URL."""
    return urlparse(text).scheme in _URL_SCHEMES


def _untrained(spec: str | None) -> bool:
    return spec is None or spec.strip().lower() in ("", "none")


def fetch_file(spec: str | os.PathLike, what: str = "weights") -> Path:
    """The local file of a path or URL (a URL is downloaded once into torch.hub's checkpoint cache)."""
    spec = os.fspath(spec)
    if is_url(spec):
        name = os.path.basename(urlparse(spec).path) or "checkpoint.pth"
        target = Path(torch.hub.get_dir()) / "checkpoints" / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(spec, os.fspath(target), progress=False)
            except (OSError, ValueError) as error:
                raise WeightsError(f"{what} {spec!r}: download failed ({error})") from None
        return target
    if not os.path.isfile(spec):
        raise WeightsError(
            f"{what} {spec!r}: no such checkpoint file; expected none, 'pretrained', 'hf-hub:ID', a path or a URL"
        )
    return Path(spec)


def _create(model_name: str, num_classes: int | None, model_kwargs: Mapping[str, object]) -> nn.Module:
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return timm.create_model(model_name, **kwargs)
    except TypeError as error:
        raise WeightsError(f"{model_name}: rejects the options {kwargs} ({error})") from None


def _classifier_rows(state: Mapping[str, Tensor], model: nn.Module) -> int | None:
    """The class count of a training-form checkpoint, read from the model's first classifier weight."""
    classifier = model.pretrained_cfg.get("classifier", ())
    name = classifier if isinstance(classifier, str) else classifier[0]
    weight = state.get(f"{name}.weight")
    return None if weight is None else weight.shape[0]


def _class_names(checkpoint: object) -> list[str] | None:
    """``class_names`` stored in a checkpoint, at the top level or in its ``args`` mapping."""
    if not isinstance(checkpoint, Mapping):
        return None
    args = checkpoint.get("args")
    names = checkpoint.get("class_names")
    if names is None and isinstance(args, Mapping):
        names = args.get("class_names")
    if isinstance(names, Sequence) and not isinstance(names, str) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _load_released(model_name: str, spec: str, num_classes: int | None, model_kwargs: Mapping) -> nn.Module:
    """timm's released weights (``"pretrained"``), or those of the Hugging Face repository ``"hf-hub:ID"``."""
    overlay = {"hf_hub_id": spec.removeprefix(HF_PREFIX)} if spec.startswith(HF_PREFIX) else {}
    cfg = {**_create(model_name, None, model_kwargs).pretrained_cfg, **overlay}
    if not (cfg.get("url") or cfg.get("hf_hub_id") or cfg.get("file")):
        raise WeightsError(f"weights {spec!r}: no released weights exist for {model_name}")
    kwargs = dict(model_kwargs, **({"num_classes": num_classes} if num_classes is not None else {}))
    try:
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as error:  # network, Hugging Face and checksum failures all mean the same to the user
        raise WeightsError(
            f"weights {spec!r}: could not load the released weights of {model_name} "
            f"({one_line(error)}); they need network access (Colab has it), "
            "or pass a downloaded checkpoint's path"
        ) from None


def _load_checkpoint_file(model_name: str, path: Path, model_kwargs: Mapping) -> tuple[nn.Module, list[str] | None]:
    checkpoint = read_checkpoint(path)
    model = _create(model_name, None, model_kwargs)
    rows = _classifier_rows(_read_state_dict(path), model)
    if rows is not None and rows != model.num_classes:  # a checkpoint trained on another dataset
        model.reset_classifier(rows)
    return load_checkpoint(model, path), _class_names(checkpoint)


# --- fused TorchScript files ----------------------------------------------------------------------


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)
        try:
            return torch.jit.load(os.fspath(path), map_location="cpu")
        except Exception as error:
            raise WeightsError(f"{path}: not a loadable TorchScript model ({one_line(error)})") from None


def _fused_forms(model_name: str, rows: int | None, model_kwargs: Mapping) -> Iterator[tuple[nn.Module, int]]:
    """``(fused model, upstream's fused parameter count)`` for each fused form of the variant, built lazily."""
    from .analysis.stats import count_parameters, standalone_batchnorm_parameters
    from .reparam import has_single_branch_form, reparameterize

    with torch.random.fork_rng(devices=[]):
        model = _create(model_name, rows, model_kwargs).eval()
    paper = standalone_batchnorm_parameters(model)
    for single in (False, True) if has_single_branch_form(model) else (False,):
        fused = reparameterize(model, single_branch=single)
        yield fused, count_parameters(fused) + paper


def _classifier_rows_fused(state: Mapping[str, Tensor]) -> int | None:
    """Rows of the last 2-D weight of a fused state dict: the classifier, which every variant puts last."""
    weights = [value for key, value in state.items() if key.endswith("weight") and value.dim() == 2]
    return weights[-1].shape[0] if weights else None


def _other_variant(path: Path, model_name: str) -> str:
    """The registered variant a file's name starts with (upstream names its files ``NAME_..._300e...``)."""
    stem = path.name.lower()
    if stem.startswith(model_name + "_"):
        return ""
    return next((name for name in sorted(list_models(), key=len, reverse=True) if stem.startswith(name + "_")), "")


def load_torchscript(
    path: str | os.PathLike, model_name: str, model_kwargs: Mapping[str, object] | None = None
) -> tuple[nn.Module, str, int]:
    """A fused TorchScript file as a model of ``model_name``: ``(model, form, class count)``.

    ``form`` is ``"fused"`` or ``"torchscript"``.

    ``"fused"``: the weights fit this package's fused form (deploy, else single-branch) and are loaded
    into it strictly. ``"torchscript"``: the parameter count is upstream's fused count of the variant
    (``replace_batchnorm`` leaves token-mixer BatchNorms), so the scripted model runs as is. Anything
    else raises :class:`WeightsError`, naming the variant the file's name says it belongs to.
    """
    path, kwargs = Path(path), dict(model_kwargs or {})
    script = _jit_load(path).eval()
    state = {k: v for k, v in script.state_dict().items()}
    params = sum(p.numel() for p in script.parameters())
    rows = _classifier_rows_fused(state)
    first_error, paper_params = None, None
    for fused, paper in _fused_forms(model_name, rows, kwargs):
        paper_params = paper_params or paper
        try:
            check_state_dict(state, fused.state_dict(), source=os.fspath(path))
        except CheckpointError as error:
            first_error = first_error or error
            continue
        fused.load_state_dict(state, strict=True)
        return fused.eval(), "fused", rows
    if params == paper_params:  # upstream's fuse form of this variant: run the scripted model itself
        return script, "torchscript", rows
    other = _other_variant(path, model_name)
    owner = f"of {other}, not of {model_name}" if other else f"that does not fit {model_name}"
    detail = str(first_error).removeprefix(f"{path}: ")
    raise WeightsError(f"{path}: a fused TorchScript model {owner} ({params} parameters; {detail})")


# --- the resolver ---------------------------------------------------------------------------------


def load_weights(
    model_name: str,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, object] | None = None,
) -> tuple[nn.Module, Weights]:
    """Create ``model_name`` in eval mode with ``weights`` (see the module docstring), and describe them.

    ``num_classes`` sets the classifier of untrained and released weights (a checkpoint brings its
    own). Class names: the checkpoint's ``class_names`` (top level or in ``args``), else ImageNet's
    for trained 1000-class weights, else none.
    """
    model_name = check_model_name(model_name, "model")
    spec = None if weights is None else os.fspath(weights)
    kwargs = dict(model_kwargs or {})
    names, form, class_count = None, "train", None
    with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's random state alone
        torch.manual_seed(seed)
        if _untrained(spec):
            model, description = (
                _create(model_name, num_classes, kwargs),
                f"untrained weights (random init, seed {seed})",
            )
        elif spec == "pretrained" or spec.startswith(HF_PREFIX):
            source = "timm pretrained" if spec == "pretrained" else spec
            model, description = _load_released(model_name, spec, num_classes, kwargs), f"released weights ({source})"
        else:
            path = fetch_file(spec)
            if is_torchscript(path):
                model, form, class_count = load_torchscript(path, model_name, kwargs)
            else:
                model, names = _load_checkpoint_file(model_name, path, kwargs)
            description = f"weights from {path.name}"
    trained = not _untrained(spec)
    class_count = class_count or model.num_classes
    if names is not None and len(names) == class_count:
        class_names = tuple(names)
    elif trained and class_count == 1000:
        info = timm.data.ImageNetInfo()
        class_names = tuple(info.index_to_description(i) for i in range(info.num_classes()))
    else:
        class_names = None
    return model.eval(), Weights(description, trained, class_names, form)
