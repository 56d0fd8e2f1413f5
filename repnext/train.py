"""Image-classification training with upstream's log and checkpoint formats, from one CPU to many GPUs.

``repnext train MODEL --data PATH|builtin:NAME --out DIR`` trains in one process;
``torchrun --nproc_per_node=N -m repnext train MODEL ...`` runs the same loop under
DistributedDataParallel (timm's ``init_distributed_device_so`` reads the torchrun environment).
Optimizer, scheduler, augmentation, mixup and losses come from timm's factories; AMP (float16)
is used on CUDA.

Outputs, written atomically after every epoch (by rank 0):

* ``DIR/log.txt``: one JSON object per epoch with upstream's (DeiT's) keys ``train_lr``,
  ``train_loss``, ``test_loss``, ``test_acc1``, ``test_acc5`` (percent), ``epoch`` (from 0),
  ``n_parameters``.
* ``checkpoint.pth`` (last epoch) and ``best.pth`` (best ``test_acc1``) in ``--checkpoint-dir``
  (default ``DIR``): upstream's ``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'}`` plus
  ``'max_accuracy'``, ``'class_names'`` (index -> folder name) and, with AMP, ``'scaler'``. With
  ``--weights-only``, ``best.pth`` alone, without the optimizer, scheduler and scaler states (a third
  of the size, small enough to commit; such a run cannot be resumed). ``args``
  is a plain dict, so the files load with ``weights_only=True`` and through
  ``timm.create_model(name, pretrained=True, num_classes=K, pretrained_cfg_overlay=dict(file=PATH,
  num_classes=K))`` (the overlay's ``num_classes`` keeps timm from dropping a head of K != 1000 classes).

Every epoch reseeds python, numpy and torch from ``(seed, epoch, rank)`` and the sampler shuffles
with ``seed + epoch``, so a run resumed from a checkpoint repeats an uninterrupted one; on CPU
(deterministic algorithms) two runs with one seed and one ``--threads`` give identical logs and
weights (float sums depend on the thread count, so pipelines pin it).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import json
import math
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup, create_transform, resolve_model_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import NativeScaler, dispatch_clip_grad
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .checkpoint import CheckpointError, check_state_dict, read_checkpoint
from .datasets import build_datasets
from .distributed import Distributed, runtime, setup_distributed, shard
from .evaluation import evaluate_forms
from .io import atomic_path, write_serialized, write_text
from .progress import add_arguments as add_progress_arguments
from .progress import bar, wanted
from .registry import create_model

__all__ = [
    "Distributed",
    "TrainConfig",
    "add_arguments",
    "config_from_args",
    "evaluate",
    "parse_model_kwargs",
    "train",
    "train_one_epoch",
]

LOG_KEYS = ("train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "epoch", "n_parameters")
CHECKPOINT_KEYS = ("model", "optimizer", "lr_scheduler", "epoch", "args")
_POSITIVE = ("epochs", "img_size", "batch_size")
_INTS = (*_POSITIVE, "warmup_epochs", "seed", "workers")
_NON_NEGATIVE = ("lr", "min_lr", "warmup_lr", "weight_decay", "smoothing", "color_jitter", "reprob", "mixup", "cutmix")
_FLOATS = (*_NON_NEGATIVE, "crop_pct")
# Boolean options any run may set: field -> (the flag that turns the default over, its help).
SWITCHES = {
    "amp": ("--no-amp", "float32 on CUDA too"),
    "channels_last": ("--channels-last", "NHWC memory layout for weights and images (faster depthwise convs on CPU)"),
    "verify_images": ("--no-verify-images", "skip decoding every image before training (large datasets)"),
}


@dataclass
class TrainConfig:
    """Everything a run depends on; stored as ``args`` in its checkpoints. Defaults follow upstream."""

    model: str
    data: str
    out: str
    epochs: int = 300
    img_size: int = 224
    batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 5
    sched: str = "cosine"
    opt: str = "adamw"
    weight_decay: float = 0.025
    clip_grad: float | None = None
    clip_mode: str = "norm"
    smoothing: float = 0.1
    color_jitter: float = 0.4
    aa: str | None = None
    reprob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    crop_pct: float = 0.875
    model_kwargs: dict = field(default_factory=dict)
    checkpoint_dir: str | None = None
    checkpoints: bool = True  # False: log.txt only (runs whose weights nothing uses; no --resume)
    weights_only: bool = False  # True: best.pth without optimizer state, no checkpoint.pth (no --resume)
    resume: str | None = None
    seed: int = 0
    workers: int = 0
    device: str | None = None
    amp: bool = True
    channels_last: bool = False  # NHWC activations and weights: the same function, about 2x faster on CPU
    threads: int | None = None
    progress: bool | None = None
    verify_images: bool = True

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of weights and images during training (``--channels-last``)."""
        return torch.channels_last if self.channels_last else torch.preserve_format

    def check(self) -> None:
        """Raise ``ValueError`` naming the command-line option of the first invalid value."""
        for name in (*_POSITIVE, "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{option_name(name)}: must be a positive integer, got {value}")
        for name in ("warmup_epochs", "workers", *_NON_NEGATIVE):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{option_name(name)}: must be non-negative, got {value}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"--crop-pct: must be in (0, 1], got {self.crop_pct}")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ValueError(f"--batch-size: mixup and cutmix need an even batch size, got {self.batch_size}")


def option_name(name: str) -> str:
    """The command-line option of a :class:`TrainConfig` field: ``img_size`` -> ``--img-size``."""
    return f"--{name.replace('_', '-')}"


def parse_model_kwargs(items: Sequence[str]) -> dict:
    """``["mode=nearest", "levels=0,0,0,0", "single_branch=True"]`` -> keyword arguments for the model.

    Values are Python literals (``3``, ``True``, ``0,0,0,0`` is a tuple); anything else is a string.
    """
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-kwargs: expected KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``repnext train`` options (one per :class:`TrainConfig` field)."""
    default = TrainConfig("", "", "")
    parser.add_argument("model", help="variant to train, e.g. repnext_m0 (see `repnext list`)")
    parser.add_argument("--data", required=True, help="ImageFolder root with train/ and val/, or builtin:photos")
    parser.add_argument("--out", required=True, help="folder for log.txt (and checkpoints unless --checkpoint-dir)")
    parser.add_argument("--checkpoint-dir", help="folder for checkpoint.pth and best.pth (default: --out)")
    parser.add_argument("--resume", help="continue from this checkpoint (its epoch + 1); log.txt keeps earlier epochs")
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model constructor arguments, e.g. mode=nearest levels=0,0,0,0 single_branch=True",
    )
    for name in _INTS:
        parser.add_argument(option_name(name), type=int, default=getattr(default, name))
    for name in _FLOATS:
        parser.add_argument(option_name(name), type=float, default=getattr(default, name))
    parser.add_argument("--clip-grad", type=float, help="gradient clipping threshold (default: none)")
    parser.add_argument("--clip-mode", default=default.clip_mode, choices=("norm", "value", "agc"))
    parser.add_argument("--opt", default=default.opt, help="timm optimizer name")
    parser.add_argument("--sched", default=default.sched, help="timm scheduler name (stepped once per epoch)")
    parser.add_argument("--aa", help="timm AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (default: none)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    for name, (flag, help_text) in SWITCHES.items():
        action = "store_false" if getattr(default, name) else "store_true"
        parser.add_argument(flag, dest=name, action=action, help=help_text)
    parser.add_argument(
        "--no-checkpoints",
        dest="checkpoints",
        action="store_false",
        help="write log.txt only: no checkpoint.pth or best.pth (the run cannot be resumed)",
    )
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="write best.pth only, without optimizer and scheduler state (small enough to commit; no --resume)",
    )
    add_progress_arguments(parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``repnext train`` arguments."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "model_kwargs"}
    return TrainConfig(**values, model_kwargs=parse_model_kwargs(args.model_kwargs))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch of one process, independent of every other (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (augmentations draw from all three)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loaders(config: TrainConfig, train_set, val_set, dist_info: Distributed) -> tuple[DataLoader, DataLoader]:
    sampler = DistributedSampler(train_set, dist_info.world_size, dist_info.rank, shuffle=True, seed=config.seed)
    pin = dist_info.device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=pin,
        drop_last=True,
        generator=torch.Generator(),
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"--batch-size: {config.data} has {len(train_set)} training images, fewer than one batch "
            f"of {config.batch_size} per process ({dist_info.world_size} processes)"
        )
    val_shard = Subset(val_set, shard(len(val_set), dist_info))  # exact: no padded duplicates
    val_loader = DataLoader(val_shard, config.batch_size, num_workers=config.workers, pin_memory=pin)
    return train_loader, val_loader


def _build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    try:
        model = create_model(config.model, num_classes=num_classes, **config.model_kwargs)
    except TypeError as error:
        raise ValueError(f"--model-kwargs: {config.model} rejects {config.model_kwargs} ({error})") from None
    if getattr(model, "distillation", False):
        raise ValueError("--model-kwargs: distillation=True needs a teacher model, which repnext train does not train")
    return model


def _set_transforms(config: TrainConfig, model: nn.Module, train_set, val_set) -> None:
    data_config = resolve_model_data_config(model)
    common = dict(input_size=config.img_size, interpolation="bicubic", mean=data_config["mean"], std=data_config["std"])
    train_set.transform = create_transform(
        is_training=True,
        color_jitter=config.color_jitter,
        auto_augment=config.aa,
        re_prob=config.reprob,
        re_mode="pixel",
        **common,
    )
    val_set.transform = create_transform(is_training=False, crop_pct=config.crop_pct, **common)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    dist_info: Distributed,
    scaler: NativeScaler | None = None,
    mixup: Mixup | None = None,
    desc: str = "train",
    progress: bool = False,
) -> dict[str, float]:
    """One pass over ``loader``; returns upstream's ``{'lr', 'loss'}`` (loss averaged over steps and processes)."""
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    device, amp = dist_info.device, scaler is not None
    total, steps = 0.0, 0
    for images, targets in bar(loader, desc, progress):
        images = images.to(device, non_blocking=True, memory_format=config.memory_format)
        targets = targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = criterion(model(images), targets)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"{desc}: loss is {value} at step {steps}; stopping (the last checkpoint is kept)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler(
                loss, optimizer, clip_grad=config.clip_grad, clip_mode=config.clip_mode, parameters=model.parameters()
            )
        else:
            loss.backward()
            if config.clip_grad is not None:
                dispatch_clip_grad(model.parameters(), config.clip_grad, mode=config.clip_mode)
            optimizer.step()
        total, steps = total + value, steps + 1
    total, steps = dist_info.sum([total, steps])
    return {"lr": lr, "loss": total / steps}


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dist_info: Distributed,
    amp: bool = False,
    desc: str = "val",
    progress: bool = False,
) -> dict[str, float]:
    """Cross-entropy and top-1/top-5 accuracy (percent) over every process's shard of the validation set."""
    return evaluate_forms({"model": model}, loader, dist_info, amp, desc, progress).metrics["model"]


def _read_log(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON log line ({error.msg})") from None
    return rows


def _write_log(path: Path, rows: Sequence[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:  # through memory: the archive's inner folder is not named after the temp file
        write_serialized(tmp, lambda buffer: torch.save(state, buffer))


_RESUME_STATE = ("optimizer", "lr_scheduler", "scaler")


def _save_epoch(
    log: Path, rows: Sequence[dict], checkpoint_dir: Path | None, checkpoint: dict, best: bool, weights_only: bool
) -> None:
    """Log first, checkpoint last: a crash in between makes ``--resume`` redo this epoch, never skip it."""
    _write_log(log, rows)
    if checkpoint_dir is None:
        return
    if weights_only:
        if best:
            _save(checkpoint_dir / "best.pth", {k: v for k, v in checkpoint.items() if k not in _RESUME_STATE})
        return
    if best:
        _save(checkpoint_dir / "best.pth", checkpoint)
    _save(checkpoint_dir / "checkpoint.pth", checkpoint)


def _load_resume(path: str, model: nn.Module) -> dict:
    """Read a training checkpoint (path or URL) and load its weights into ``model``; errors name the file."""
    from .weights import fetch_file

    try:
        state = read_checkpoint(fetch_file(path, "--resume"))
    except CheckpointError as error:
        raise CheckpointError(f"--resume: {error}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"--resume: {path}: not a training checkpoint (no {missing[0]!r}; weights-only files "
            "can be loaded with timm.create_model(..., pretrained_cfg_overlay=dict(file=...)))"
        )
    check_state_dict(state["model"], model.state_dict(), source=f"--resume: {path}")
    model.load_state_dict(state["model"])
    return state


def _loss(config: TrainConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """timm's mixup/cutmix (when enabled) and the matching training criterion, as upstream."""
    if config.mixup or config.cutmix:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                      num_classes=num_classes)  # fmt: skip
        return mixup, SoftTargetCrossEntropy()  # mixup applies the label smoothing to the targets
    if config.smoothing:
        return None, LabelSmoothingCrossEntropy(config.smoothing)
    return None, nn.CrossEntropyLoss()


def _restore(state: dict, optimizer, scheduler, scaler: NativeScaler | None, log: Path) -> tuple[int, float, list]:
    """Load a resumed run's optimizer, scheduler and scaler; return its start epoch, best top-1 and log rows."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    start_epoch = state["epoch"] + 1
    # Drop rows of epochs the checkpoint does not include (a crash between writing the log and the checkpoint).
    rows = [row for row in _read_log(log) if row.get("epoch", start_epoch) < start_epoch] if log.exists() else []
    return start_epoch, state.get("max_accuracy", 0.0), rows


LOCK_NAME = ".repnext-train.lock"


def train(config: TrainConfig) -> list[dict]:
    """Train ``config.model`` on ``config.data``; return every row of ``log.txt`` (earlier epochs included).

    Raises ``ValueError`` (bad option, :class:`~repnext.datasets.DatasetError`,
    :class:`~repnext.checkpoint.CheckpointError`) before any output is written. On
    ``KeyboardInterrupt`` the checkpoint of the last complete epoch stays resumable.
    """
    config.check()
    dist_info = setup_distributed(config.device)
    try:
        with exclusive_out(config.out, dist_info.rank == 0):
            with runtime(config.threads, deterministic=dist_info.device.type == "cpu"):
                return _train(config, dist_info)
    finally:
        if dist_info.owned:
            dist.destroy_process_group()


@contextlib.contextmanager
def exclusive_out(out: str | os.PathLike, owner: bool = True) -> Iterator[None]:
    """Hold ``out`` for one run: a second ``repnext train`` with the same ``--out`` gets ``ValueError`` at once.

    The lock is an ``flock`` on a file in ``out``, released (and the file removed) when the run ends, however
    it ends; the operating system releases it if the process dies. Only the process that writes (``owner``) holds it.
    """
    if not owner:
        yield
        return
    path = Path(out) / LOCK_NAME
    created = not path.parent.exists()  # a run that fails before writing leaves no folder behind
    path.parent.mkdir(parents=True, exist_ok=True)
    held = False
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ValueError(f"--out {out}: another run is training there ({holder}); wait for it or choose "
                                 "another --out") from None  # fmt: skip
            held = True
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            yield
    finally:
        if held:
            path.unlink(missing_ok=True)
        if created and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()


def _train(config: TrainConfig, dist_info: Distributed) -> list[dict]:
    main_process = dist_info.rank == 0
    progress = main_process and wanted(config.progress)
    out = Path(config.out)
    checkpoint_dir = Path(config.checkpoint_dir or config.out)
    train_set, val_set = build_datasets(config.data, verify_images=config.verify_images)

    seed_everything(config.seed)  # same initial weights in every process
    model = _build_model(config, len(train_set.classes))
    _set_transforms(config, model, train_set, val_set)
    state = _load_resume(config.resume, model) if config.resume else None
    model.to(dist_info.device, memory_format=config.memory_format)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
    )
    amp = config.amp and dist_info.device.type == "cuda"
    scaler = NativeScaler(device=dist_info.device.type) if amp else None
    start_epoch, max_accuracy, rows = 0, 0.0, []
    if state is not None:
        start_epoch, max_accuracy, rows = _restore(state, optimizer, scheduler, scaler, out / "log.txt")
    train_loader, val_loader = _loaders(config, train_set, val_set, dist_info)
    mixup, criterion = _loss(config, len(train_set.classes))
    ddp_model = model
    if dist_info.enabled:
        ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    for epoch in range(start_epoch, config.epochs):
        try:
            seed = epoch_seed(config.seed, epoch, dist_info.rank)
            seed_everything(seed)
            train_loader.generator.manual_seed(seed)  # worker seeds, when --workers > 0
            train_loader.sampler.set_epoch(epoch)
            desc = f"epoch {epoch}/{config.epochs}"
            stats = train_one_epoch(
                ddp_model,
                train_loader,
                criterion,
                optimizer,
                config,
                dist_info,
                scaler,
                mixup,
                desc=desc,
                progress=progress,
            )
            scheduler.step(epoch + 1)
            dist_info.broadcast_buffers(model)  # every process validates the model that rank 0 saves
            test = evaluate(model, val_loader, dist_info, amp, desc=f"{desc} val", progress=progress)
        except KeyboardInterrupt:
            if main_process:
                hint = f"resume with --resume {checkpoint_dir / 'checkpoint.pth'}" if epoch else "no epoch completed"
                hint = hint if config.checkpoints else "no checkpoints were written (--no-checkpoints)"
                hint = "no resumable checkpoint was written (--weights-only)" if config.weights_only else hint
                print(f"repnext train: interrupted in epoch {epoch}; {hint}", file=sys.stderr)
            raise
        values = (stats["lr"], stats["loss"], test["loss"], test["acc1"], test["acc5"], epoch, n_parameters)
        rows.append(dict(zip(LOG_KEYS, values, strict=True)))
        best = test["acc1"] > max_accuracy
        max_accuracy = max(max_accuracy, test["acc1"])
        if main_process:
            checkpoint = {
                "model": {key: value.contiguous() for key, value in model.state_dict().items()},  # NCHW on disk
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "args": asdict(config),
                "max_accuracy": max_accuracy,
                "class_names": list(train_set.classes),
            }
            if scaler is not None:
                checkpoint["scaler"] = scaler.state_dict()
            saved_to = checkpoint_dir if config.checkpoints else None
            _save_epoch(out / "log.txt", rows, saved_to, checkpoint, best, config.weights_only)
            print(
                f"{desc}: train_loss {stats['loss']:.4f}  test_loss {test['loss']:.4f}  "
                f"test_acc1 {test['acc1']:.2f}  test_acc5 {test['acc5']:.2f}  max {max_accuracy:.2f}",
                flush=True,
            )
    if dist_info.enabled:
        dist.barrier()  # every process returns once rank 0's checkpoint is complete
    return rows
