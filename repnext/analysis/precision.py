"""Half-precision inference (float16, bfloat16) against float32, stage by stage.

RecNeXt's README lists as a limitation that "the recursive decomposition may introduce numerical
instability during mixed precision training". This measures the inference side of that claim: the
same model (random weights, random BatchNorm statistics so that no BatchNorm is an identity) in its
training form and its fused form, cast whole to a half dtype, on seeded photo crops, and the error of
each stage output and of the logits against the float32 run of the same form.

Errors: ``rel_l2 = ||y_half - y_32|| / ||y_32||`` (Frobenius norms over the batch) and ``max_rel`` =
largest absolute difference over the largest float32 magnitude (the convention of
:func:`repnext.analysis.equivalence.compare_outputs`). Unit roundoff for reference: float16 ``2^-11``
(4.9e-4), bfloat16 ``2^-8`` (3.9e-3).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..distributed import runtime
from ..plotting import use_style
from ..registry import check_model_name, create_model
from ..tables import Table
from .equivalence import compare_outputs, fuse_without_batchnorm, randomize_batchnorm
from .erf import photo_inputs

__all__ = ["UNIT_ROUNDOFF", "mixed_precision_training", "precision_errors", "precision_figure", "stage_outputs"]

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
FORMS = ("train", "deploy")
COLUMNS = ("model", "form", "dtype", "device", "output", "rel_l2", "max_rel", "finite", "unit_roundoff")
TRAINING_COLUMNS = ("model", "dtype", "steps", "first_loss", "last_loss", "max_loss_rel_diff", "finite")


@torch.no_grad()
def stage_outputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """``{"stage0": ..., "stage3": ..., "logits": ...}`` of a MetaNeXt-layout model on ``x`` ``[B, 3, H, W]``."""
    outputs = {}
    x = model.stem(x)
    for i, stage in enumerate(model.stages):
        x = stage(x)
        outputs[f"stage{i}"] = x
    outputs["logits"] = model.forward_head(x)
    return outputs


def _errors(reference: Tensor, other: Tensor) -> tuple[float, float, bool]:
    other = other.to(reference.dtype)
    finite = bool(torch.isfinite(other).all())
    rel_l2 = (torch.linalg.vector_norm(other - reference) / torch.linalg.vector_norm(reference)).item()
    return rel_l2, compare_outputs(reference, other).max_rel, finite


def _check_half_dtypes(dtypes: Sequence[str]) -> None:
    for dtype in dtypes:
        if dtype not in UNIT_ROUNDOFF:
            raise ValueError(f"dtypes: {dtype!r} is not a half dtype; choose from {', '.join(UNIT_ROUNDOFF)}")


def precision_errors(names: Sequence[str], dtypes: Sequence[str] = ("float16", "bfloat16"),
                     forms: Sequence[str] = FORMS, devices: Sequence[str] = ("cpu",), resolution: int = 224,
                     batch_size: int = 2, seed: int = 0) -> Table:  # fmt: skip
    """One row per model, form, dtype, device and output (stage0..stage3, logits).

    Devices that are not present (``cuda`` without a GPU) are skipped; the float32 reference of each
    form runs on the same device as the half-precision copy.
    """
    _check_half_dtypes(dtypes)
    for form in forms:
        if form not in FORMS:
            raise ValueError(f"forms: unknown form {form!r}; choose from {', '.join(FORMS)}")
    present = [d for d in devices if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    inputs = photo_inputs(batch_size, resolution, seed)
    rows = []
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = randomize_batchnorm(create_model(check_model_name(name)), seed=seed).eval()
        for form in forms:
            built = model if form == "train" else fuse_without_batchnorm(model)
            for device in present:
                reference = stage_outputs(copy.deepcopy(built).to(device), inputs.to(device))
                for dtype in dtypes:
                    half = copy.deepcopy(built).to(device=device, dtype=getattr(torch, dtype))
                    outputs = stage_outputs(half, inputs.to(device=device, dtype=getattr(torch, dtype)))
                    for output, ref in reference.items():
                        rel_l2, max_rel, finite = _errors(ref, outputs[output])
                        rows.append(dict(model=name, form=form, dtype=dtype, device=device, output=output,
                                         rel_l2=rel_l2, max_rel=max_rel, finite=finite,
                                         unit_roundoff=UNIT_ROUNDOFF[dtype]))  # fmt: skip
    order = {f"stage{i}": i for i in range(4)} | {"logits": 4}
    for row in rows:
        row["order"] = order.get(row["output"], 5)
    floats = dict(rel_l2=".2e", max_rel=".2e", unit_roundoff=".1e")
    return Table(list(COLUMNS), rows, floats=floats, sort_by=("model", "form", "dtype", "device", "order"))


def mixed_precision_training(names: Sequence[str], dtypes: Sequence[str] = ("float16", "bfloat16"),
                             steps: int = 8, batch_size: int = 16, resolution: int = 64, lr: float = 1e-3,
                             seed: int = 0) -> Table:  # fmt: skip
    """The training side of RecNeXt's limitation, at laptop scale: per model, ``steps`` AdamW steps from one seeded
    initialisation on the same batches of photo crops (8 classes, ``[batch_size, 3, resolution, resolution]``),
    once in float32 and once per half dtype with the forward under ``torch.autocast("cpu", dtype)`` (weights,
    gradients and optimizer in float32, as mixed precision trains). One row per model and dtype (float32 included):
    first and last loss, ``max_loss_rel_diff = max_t |loss_t - loss32_t| / loss32_t`` over the steps, and whether
    every loss and gradient stayed finite. One thread, so that the bytes do not depend on the thread count."""
    _check_half_dtypes(dtypes)
    images = photo_inputs(steps * batch_size, resolution, seed)
    labels = torch.arange(steps * batch_size) % 8  # photo_inputs takes the classes in turn
    rows = []
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            initial = create_model(check_model_name(name), num_classes=8)
        reference = None
        for dtype in ("float32", *dtypes):
            with runtime(threads=1):  # a reduction's order, and so the drifting losses, would follow the thread count
                losses, finite = _train_steps(copy.deepcopy(initial), images, labels, batch_size, lr, dtype)
            reference = losses if reference is None else reference
            rel = max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))
            rows.append(dict(model=name, dtype=dtype, steps=steps, first_loss=losses[0], last_loss=losses[-1],
                             max_loss_rel_diff=rel, finite=finite))  # fmt: skip
    floats = dict(first_loss=".4f", last_loss=".4f", max_loss_rel_diff=".2e")
    return Table(list(TRAINING_COLUMNS), rows, floats=floats, sort_by=("model",))


def _train_steps(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, lr: float,
                 dtype: str) -> tuple[list[float], bool]:  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, finite = [], True
    model.train()
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        with torch.autocast("cpu", dtype=getattr(torch, dtype), enabled=dtype != "float32"):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = (
            finite
            and bool(torch.isfinite(loss))
            and all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
        )
        optimizer.step()
        losses.append(loss.item())
    return losses, finite


def precision_figure(table: Table):
    """Relative L2 error per output, one panel per dtype, one line per model and form (log scale); a Figure."""
    from matplotlib.figure import Figure

    use_style()
    rows = table.sorted_rows()
    dtypes = sorted({r["dtype"] for r in rows})
    fig = Figure(figsize=(4.6 * len(dtypes), 4.2), layout="constrained")
    for i, dtype in enumerate(dtypes):
        ax = fig.add_subplot(1, len(dtypes), i + 1)
        lines = sorted({(r["model"], r["form"], r["device"]) for r in rows if r["dtype"] == dtype})
        for model, form, device in lines:
            key = (model, form, device, dtype)
            points = [r for r in rows if (r["model"], r["form"], r["device"], r["dtype"]) == key]
            suffix = "" if device == "cpu" else f", {device}"
            ax.plot([r["output"] for r in points], [r["rel_l2"] for r in points], "o-" if form == "train" else "s--",
                    label=f"{model} ({form}{suffix})")  # fmt: skip
        ax.axhline(UNIT_ROUNDOFF[dtype], color="grey", lw=0.8, ls=":", label="unit roundoff")
        ax.set_yscale("log")
        ax.set_title(f"{dtype} vs float32")
        ax.set_ylabel("relative L2 error")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)  # below: the curves fill the axes
    return fig
