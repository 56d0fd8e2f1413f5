"""``repnext eval``: top-1, top-5 and loss of a model on an ImageFolder split, in one or both forms.

The split is read as torchvision's ImageFolder reads it (classes in sorted order, the ImageNet
layout ``ROOT/SPLIT/<class>/<image>``) or from ``builtin:photos``, and preprocessed with the model's
own data config (:func:`timm.data.resolve_model_data_config`: input size, ``crop_pct``,
interpolation, mean and std; each can be overridden). With both forms, every image goes through the
training form and the fused one, and the two are compared image by image: the share of identical
top-1 predictions and the largest absolute logit difference.

Under ``torchrun`` each process takes every ``world_size``-th image (no image twice, none left out)
and the totals are summed over processes, so the numbers equal one process's exactly (up to the
float summation order of the loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from timm.data import create_transform, resolve_model_data_config
from torch import nn
from torch.utils.data import DataLoader, Subset

from .datasets import build_split
from .distributed import Distributed, runtime, setup_distributed, shard
from .progress import bar
from .registry import create_model
from .tables import Table
from .weights import in_form, load_weights

__all__ = ["EVAL_COLUMNS", "FormComparison", "eval_data_config", "evaluate_forms", "evaluate_model"]

EVAL_COLUMNS = (
    "model", "weights", "form", "split", "images", "top1", "top5", "loss", "top1_agreement", "max_abs_logit_diff",
)  # fmt: skip
EVAL_FORMS = ("train", "fused", "both")


@dataclass(frozen=True)
class FormComparison:
    """Per-form metrics (``{'loss', 'acc1', 'acc5'}``, percent) and, for two forms, how they agree."""

    metrics: dict[str, dict[str, float]]
    images: int
    top1_agreement: float | None = None  # percent of images whose top-1 class is the same in both forms
    max_abs_logit_diff: float | None = None


@torch.no_grad()
def evaluate_forms(
    models: Mapping[str, nn.Module],
    loader: DataLoader,
    dist_info: Distributed,
    amp: bool = False,
    desc: str = "val",
    progress: bool = False,
) -> FormComparison:
    """Cross-entropy and top-1/top-5 accuracy of each of ``models`` over every process's shard of ``loader``.

    With two models, also the share of images on which their top-1 agrees and their largest logit
    difference. Logits are ``[B, num_classes]``; sums run per batch in float64 and over processes.
    """
    for model in models.values():
        model.eval()
    device = dist_info.device
    names = list(models)
    sums = {name: [0.0, 0.0, 0.0] for name in names}  # loss, top-1 hits, top-5 hits
    count, agree, max_diff = 0, 0.0, 0.0
    for images, targets in bar(loader, desc, progress):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = {}
        for name in names:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits[name] = models[name](images).float()  # [B, num_classes]
            top = logits[name].topk(min(5, logits[name].shape[1]), dim=1).indices  # [B, k]
            hits = top.eq(targets[:, None])
            batch = sums[name]
            batch[0] += nn.functional.cross_entropy(logits[name], targets, reduction="sum").item()
            batch[1] += hits[:, 0].sum().item()
            batch[2] += hits.any(dim=1).sum().item()
        if len(names) == 2:
            first, second = logits[names[0]], logits[names[1]]
            agree += first.argmax(dim=1).eq(second.argmax(dim=1)).sum().item()
            max_diff = max(max_diff, (first - second).abs().max().item())
        count += targets.numel()
    flat = dist_info.sum([value for name in names for value in sums[name]] + [count, agree])
    (max_diff,) = dist_info.max([max_diff])
    count, agree = flat[-2], flat[-1]
    if count == 0:
        raise ValueError(f"{desc}: no images to evaluate")
    metrics = {}
    for index, name in enumerate(names):
        loss, top1, top5 = flat[3 * index : 3 * index + 3]
        metrics[name] = {"loss": loss / count, "acc1": 100.0 * top1 / count, "acc5": 100.0 * top5 / count}
    if len(names) != 2:
        return FormComparison(metrics, int(count))
    return FormComparison(metrics, int(count), 100.0 * agree / count, max_diff)


def eval_data_config(
    model_name: str,
    model: nn.Module,
    img_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> dict:
    """The model's own data config (``resolve_model_data_config``), with the given values overriding it."""
    source = model if hasattr(model, "pretrained_cfg") else create_model(model_name)  # a scripted model has none
    config = dict(resolve_model_data_config(source))
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], img_size, img_size)
    if crop_pct is not None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"--crop-pct: must be in (0, 1], got {crop_pct}")
        config["crop_pct"] = crop_pct
    if interpolation is not None:
        config["interpolation"] = interpolation
    return config


def evaluate_model(
    model_name: str,
    data: str,
    split: str = "val",
    weights: str | None = None,
    form: str = "train",
    batch_size: int = 64,
    img_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    model_kwargs: Mapping[str, object] | None = None,
    threads: int | None = None,
    device: str | None = None,
    workers: int = 0,
    progress: bool = False,
) -> Table:
    """Evaluate ``model_name`` with ``weights`` (see :func:`repnext.weights.load_weights`) on ``data``/``split``.

    ``form``: ``train`` (the loaded form), ``fused`` or ``both``. One row per form; with ``both`` the
    fused row carries the agreement. Raises ``ValueError`` naming the option or file at fault.
    """
    if form not in EVAL_FORMS:
        raise ValueError(f"--form: expected one of {', '.join(EVAL_FORMS)}, got {form!r}")
    if batch_size <= 0:
        raise ValueError(f"--batch-size: must be a positive integer, got {batch_size}")
    dist_info = setup_distributed(device)
    try:
        with runtime(threads, deterministic=dist_info.device.type == "cpu"):
            model, described = load_weights(model_name, weights, model_kwargs=model_kwargs)
            config = eval_data_config(model_name, model, img_size, crop_pct, interpolation)
            dataset = build_split(data, split, create_transform(**config, is_training=False))
            classes = len(dataset.classes)
            heads = model.num_classes if hasattr(model, "num_classes") else None
            if heads is not None and heads != classes:
                raise ValueError(
                    f"--data: {data} {split} has {classes} classes but the model's classifier has {heads} "
                    f"({described.description}); pass weights trained on these classes"
                )
            names = described.class_names
            if names is not None and len(names) == classes and tuple(names) != tuple(dataset.classes):
                differ = next(i for i, (a, b) in enumerate(zip(names, dataset.classes, strict=True)) if a != b)
                raise ValueError(
                    f"--data: class {differ} of {data} {split} is {dataset.classes[differ]!r}, "
                    f"but the weights call it {names[differ]!r}"
                )
            if form == "both":
                forms = ("train", "fused")
            else:  # a fused file holds one form: that is the one evaluated
                forms = (form if described.form == "train" else "fused",)
            models = {f: in_form(model, described, f, weights).to(dist_info.device) for f in forms}
            subset = Subset(dataset, shard(len(dataset), dist_info))
            loader = DataLoader(subset, batch_size, num_workers=workers)
            result = evaluate_forms(models, loader, dist_info, desc=f"eval {split}", progress=progress)
    finally:
        if dist_info.owned:
            dist.destroy_process_group()
    rows = []
    for name, metrics in result.metrics.items():
        compared = name == "fused" and result.top1_agreement is not None
        rows.append(dict(
            model=model_name, weights=described.description.removeprefix("weights from "), form=name, split=split,
            images=result.images, top1=metrics["acc1"], top5=metrics["acc5"], loss=metrics["loss"],
            top1_agreement=result.top1_agreement if compared else None,
            max_abs_logit_diff=result.max_abs_logit_diff if compared else None,
        ))  # fmt: skip
    floats = dict(top1=".2f", top5=".2f", loss=".4f", top1_agreement=".2f", max_abs_logit_diff=".2e")
    return Table(list(EVAL_COLUMNS), rows, floats=floats)
