"""Checkpoint loading with strict, explained validation.

Upstream releases are ``torch.save({'model': state_dict, ...})`` files; timm-trained ones use
``state_dict`` (or ``state_dict_ema``). Every mismatch is reported by key with both shapes,
because ``strict=False`` silently leaves layers at their random initialisation.
"""

from __future__ import annotations

import argparse
import os
import re
import zipfile
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .errors import one_line

__all__ = [
    "CheckpointError",
    "checkpoint_filter_fn",
    "is_torchscript",
    "load_checkpoint",
    "load_pretrained_file",
    "read_checkpoint",
    "read_state_dict",
]

_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _unwrap(checkpoint: object, source: str) -> dict[str, Tensor]:
    if isinstance(checkpoint, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise CheckpointError(
            f"{source}: not a state dict (expected a mapping of tensors, optionally under one of {list(_WRAPPER_KEYS)})"
        )
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), which holds code beside its weights."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def read_checkpoint(path: str | os.PathLike) -> object:
    """``torch.load`` a checkpoint file on CPU with ``weights_only=True``; every failure is one line naming it.

    Pickles that need anything beyond tensors and plain containers stay refused (untrusted code).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if is_torchscript(path):
        raise CheckpointError(f"{path}: a TorchScript model, not a checkpoint (load it with repnext.weights)")
    try:
        # timm's train.py saves its argparse.Namespace beside the weights: plain data, safe to rebuild
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a file of other bytes fails anywhere in the unpickler (KeyError, ...)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_torch_load_error(error)})") from None


def _torch_load_error(error: Exception) -> str:
    """The gist of a ``torch.load`` error on one line (torch's ``weights_only`` explanation runs over many)."""
    text = str(error)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    if marker:
        reason = next((line.strip() for line in rest.splitlines() if line.strip()), "")
        return f"refused by weights_only=True: {reason.partition(' Please ')[0]}"
    return one_line(error)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.pth.tar`` checkpoint file into a flat state dict (on CPU)."""
    return _unwrap(read_checkpoint(path), os.fspath(path))


def checkpoint_filter_fn(state_dict: Mapping[str, object], model: nn.Module) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: unwrap an upstream checkpoint and check it against ``model``.

    Shape differences timm adapts itself are allowed: the input channels of the first conv and
    the class count of the classifiers (from ``model.pretrained_cfg``). A headless model
    (``num_classes=0``) drops the checkpoint's head. Anything else raises :class:`CheckpointError`.
    """
    state = _drop_ignored(_unwrap(state_dict, "checkpoint"), model)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first_conv = f"{cfg.get('first_conv', '')}.weight"
    classifiers = cfg.get("classifier", ())
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    adaptable_rows = {f"{name}.{kind}" for name in classifiers for kind in ("weight", "bias")}
    expected = model.state_dict()
    if getattr(model, "num_classes", None) == 0:
        state = {k: v for k, v in state.items() if k in expected or not k.startswith("head.")}
    check_state_dict(state, expected, allowed_dims={first_conv: 1, **dict.fromkeys(adaptable_rows, 0)})
    return state


def check_state_dict(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    allowed_dims: Mapping[str, int] | None = None,
    source: str = "checkpoint",
) -> None:
    """Raise :class:`CheckpointError` at the first missing, unexpected or mis-shaped key.

    ``allowed_dims`` maps a key to the one dimension whose size may differ.
    """
    allowed_dims = allowed_dims or {}
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key!r} (model expects shape {list(value.shape)})")
        got, want = tuple(state[key].shape), tuple(value.shape)
        if got != want:
            dim = allowed_dims.get(key)
            if dim is None or len(got) != len(want) or got[:dim] + got[dim + 1 :] != want[:dim] + want[dim + 1 :]:
                raise CheckpointError(
                    f"{source}: shape mismatch at {key!r}: checkpoint {list(got)}, "
                    f"model {list(want)} (a checkpoint of another variant?)"
                )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} keys the model does not have)"
        )


def _drop_ignored(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Drop keys matching the model's ``ignored_checkpoint_keys`` regex (entries upstream saves but never uses)."""
    pattern = getattr(model, "ignored_checkpoint_keys", None)
    return {k: v for k, v in state.items() if not (pattern and re.search(pattern, k))}


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` into ``model`` strictly; errors name the file and the first bad key."""
    state = _drop_ignored(read_state_dict(path), model)
    check_state_dict(state, model.state_dict(), source=os.fspath(path))
    model.load_state_dict(state, strict=True)
    return model


def load_pretrained_file(model: nn.Module, path: str | os.PathLike) -> None:
    """timm's ``custom_load`` hook: load a release checkpoint as ``pretrained=True`` would.

    For timm training checkpoints (``.pth.tar`` with ``args``), which timm's own loader refuses under
    ``weights_only``. As timm does for other weights, a different ``in_chans`` adapts the first conv
    and a different ``num_classes`` keeps the model's new classifier; every other key loads strictly.
    """
    from timm.models._manipulate import adapt_input_conv

    state = checkpoint_filter_fn(read_state_dict(path), model)
    expected = model.state_dict()
    first_conv = f"{model.pretrained_cfg['first_conv']}.weight"
    for key, value in expected.items():
        if key in state and state[key].shape != value.shape:
            state[key] = adapt_input_conv(value.shape[1], state[key]) if key == first_conv else value
    model.load_state_dict(state, strict=True)
