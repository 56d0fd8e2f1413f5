"""``repnext publish``: a trained checkpoint as upstream publishes it, plus a Hugging Face hub folder and model card.

Upstream's ``publish.py`` names its artefacts ``NAME_{distill|without_distill}_{E}e``: a model-only
``.pth`` (``{'model': state_dict}``), with ``--fused`` a TorchScript ``.pt`` of the fused model
(``torch.jit.script``; written here as ``..._fused.pt``, the name of upstream's release files), and the
run's ``log.txt`` copied as ``.txt``. The ``hf/`` folder is written with timm's own ``save_for_hf``
(``config.json`` + ``model.safetensors``) plus a ``README.md`` model card laid out like upstream's
RecNeXt cards, generated from the suite's numbers: parameters and MACs counted with
:mod:`repnext.analysis.stats`, top-1 from the run's log (and from ``repnext eval`` when given),
measured latency (from a ``repnext bench`` table when given) and usage code. Uploading the folder
(``huggingface_hub.upload_folder``, network needed) is left to the user.

Everything is written into a temporary folder and moved into place at the end, so a failure leaves
nothing behind; reruns on the same inputs write the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import read_checkpoint
from .io import replace_dir, write_serialized, write_text
from .registry import check_model_name, models_by_family
from .weights import load_weights

__all__ = ["PublishError", "model_card", "publish", "release_name"]

# Family -> (display prefix, paper title, arXiv id, code URL, BibTeX key); facts about the papers.
PAPERS = {
    "repnext": ("RepNeXt", "RepNeXt: A Fast Multi-Scale CNN using Structural Reparameterization", "2406.16004",
                "https://github.com/suous/RepNeXt", "zhao2024repnext"),
    "recnext": ("RecNeXt", "RecConv: Efficient Recursive Convolutions for Multi-Frequency Representations",
                "2412.19628", "https://github.com/suous/RecNeXt", "zhao2024recnext"),
}  # fmt: skip
PAPERS["recnext_tsb"] = PAPERS["recnext"]
AUTHORS = "Mingshu Zhao and Yi Luo and Yong Ouyang"


class PublishError(ValueError):
    """A checkpoint or table that cannot be published; the message names it."""


@dataclass(frozen=True)
class CardNumbers:
    """What the model card reports, each computed by the suite (``None`` when not available)."""

    params_m: float  # fused model, as the papers count (token-mixer BatchNorms kept)
    macs_g: float  # fvcore MACs of the fused model at ``image_size``
    image_size: int
    num_classes: int
    dataset: str
    epochs: int
    best_top1: float | None = None  # from the run's log
    best_epoch: int | None = None
    eval_top1: dict[str, float] | None = None  # form -> top-1 from `repnext eval`
    agreement: float | None = None
    latency: tuple[float, str] | None = None  # (median ms, "fused, eager, 2 threads, 224x224, cpu")


def release_name(model_name: str, epochs: int, distillation: bool = False) -> str:
    """Upstream's artefact stem, e.g. ``recnext_m1_distill_300e`` or ``repnext_m0_without_distill_8e``."""
    return f"{model_name}_{'distill' if distillation else 'without_distill'}_{epochs}e"


def _display_name(model_name: str) -> str:
    """``repnext_m0``: ``RepNeXt-M0``, ``recnext_a4``: ``RecNeXt-A4``, ``repnext_u3_tiny``: ``RepNeXt-u3_tiny``."""
    family, variant = models_by_family()[model_name], model_name.split("_", 1)[1]
    if family in PAPERS:
        return f"{PAPERS[family][0]}-{variant.upper()}"
    return f"RepNeXt-{variant}"


def _architecture(model: nn.Module) -> tuple[list[int], list[int]]:
    """Embedding dimensions and depths per stage."""
    dims = [int(info["num_chs"]) for info in model.feature_info]
    depths = [len(stage.blocks) if hasattr(stage, "blocks") else len(stage) for stage in model.stages]
    return dims, depths


def model_card(model_name: str, model: nn.Module, numbers: CardNumbers, files: Mapping[str, str]) -> str:
    """The README.md of the hub folder: YAML front matter, details, usage, results, citation (Markdown)."""
    family = models_by_family()[model_name]
    title, arxiv, code, key = PAPERS[family][1:] if family in PAPERS else (None, None, None, None)
    display = _display_name(model_name)
    dims, depths = _architecture(model)
    k = numbers.num_classes
    lines = [
        "---", "datasets:", f"- {numbers.dataset}", "language: en", "library_name: timm", "license: apache-2.0",
        "metrics:", "- accuracy", f"model_name: {model_name}", "pipeline_tag: image-classification", "tags:",
        "- vision", "- image-classification", "- pytorch", "- timm", "---", "",
        f"# Model Card for {display}", "",
        "## Abstract",
        f"{display} trained by the RepNeXt/RecNeXt artifact suite for {numbers.epochs} epochs on {numbers.dataset} "
        f"({k} classes) at {numbers.image_size}x{numbers.image_size}. Every number below was computed by the suite "
        "from this checkpoint; none is copied from the paper.", "",
        "## Model Details", "",
        "- **Model Type**: Image Classification / Feature Extraction",
        "- **Model Stats**:",
        f"  - **Parameters**: {numbers.params_m:.2f}M (fused; counted as the paper counts)",
        f"  - **MACs**: {numbers.macs_g:.3f}G (fvcore, one multiply-add = one MAC, at "
        f"{numbers.image_size}x{numbers.image_size}; element-wise ops not counted)",
    ]  # fmt: skip
    if numbers.latency is not None:
        lines.append(f"  - **Latency**: {numbers.latency[0]:.1f}ms ({numbers.latency[1]}; a time measurement)")
    lines += [
        f"  - **Image Size**: {numbers.image_size}x{numbers.image_size}", "",
        "- **Architecture Configuration**:",
        f"  - **Embedding Dimensions**: ({', '.join(map(str, dims))})",
        f"  - **Depths**: ({', '.join(map(str, depths))})", "",
    ]  # fmt: skip
    if title:
        lines += [f"- **Paper**: [{title}](https://arxiv.org/abs/{arxiv})", "", f"- **Code**: {code}", ""]
    lines += [f"- **Dataset**: {numbers.dataset}", "", "## Model Usage", "", "### Image Classification", "",
              "```python", "import timm", "import torch", "", "import repnext  # registers the variants with timm", "",
              "model = timm.create_model(", f"    {model_name!r}, pretrained=True, num_classes={k},",
              f"    pretrained_cfg_overlay=dict(file={files['safetensors']!r}, num_classes={k}),", ")",
              "model = model.eval()", "",
              "data_config = timm.data.resolve_model_data_config(model)",
              "transforms = timm.data.create_transform(**data_config, is_training=False)",
              "output = model(transforms(img).unsqueeze(0))  # img: a PIL image",
              f"top_probabilities, top_class_indices = torch.topk(output.softmax(dim=1) * 100, k={min(5, k)})",
              "```", "", "### Converting to Inference Mode", "", "```python",
              "fused = repnext.reparameterize(model)  # BatchNorms folded, branches merged", "```", ""]  # fmt: skip
    if "fused" in files:
        lines += [f"The fused TorchScript file `{files['fused']}` (as upstream's `publish.py --fused` writes it) loads "
                  f"with `torch.jit.load` or `repnext eval {model_name} --weights {files['fused']}`.", ""]  # fmt: skip
    lines += ["## Results", "", "| measure | value | source |", "| --- | --- | --- |"]
    if numbers.best_top1 is not None:
        lines.append(f"| best top-1 (%) | {numbers.best_top1:.2f} (epoch {numbers.best_epoch}) | training log |")
    for form, top1 in (numbers.eval_top1 or {}).items():
        lines.append(f"| top-1 (%), {form} form | {top1:.2f} | `repnext eval` |")
    if numbers.agreement is not None:
        lines.append(f"| same top-1 in both forms (%) | {numbers.agreement:.2f} | `repnext eval --both` |")
    lines.append("")
    if title:
        lines += ["## Citation", "", "```BibTeX", f"@misc{{{key},", f"  title={{{title}}},", f"  author={{{AUTHORS}}},",
                  "  year={2024},", f"  eprint={{{arxiv}}},", "  archivePrefix={arXiv},", "  primaryClass={cs.CV}",
                  "}", "```", ""]  # fmt: skip
    return "\n".join(lines)


def _read_csv(path: str | os.PathLike, what: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    except OSError as error:
        raise PublishError(f"{what}: {path}: {error.strerror}") from None


def _eval_numbers(path: str | os.PathLike | None) -> tuple[dict[str, float] | None, float | None]:
    if path is None:
        return None, None
    rows = _read_csv(path, "--eval")
    try:
        top1 = {row["form"]: float(row["top1"]) for row in rows}
        agreement = next((float(row["top1_agreement"]) for row in rows if row.get("top1_agreement")), None)
    except (KeyError, ValueError) as error:
        raise PublishError(f"--eval: {path}: not a `repnext eval` CSV table ({error})") from None
    return top1, agreement


def _latency(path: str | os.PathLike | None, model_name: str) -> tuple[float, str] | None:
    if path is None:
        return None
    for row in _read_csv(path, "--latency"):
        if row.get("model") == model_name and row.get("form") == "fused" and row.get("backend") == "eager":
            where = f"fused, eager, batch 1, {row['threads']} threads, {row['resolution']}x{row['resolution']}, "
            return float(row["median_ms"]), where + f"{row['device']}, measured by `repnext bench`"
    raise PublishError(f"--latency: {path}: no fused eager row for {model_name}")


def _stabilize_torchscript(path: Path) -> None:
    """Make a ``torch.jit.save`` archive reproducible across runs, machines and checkout paths.

    The archive is rewritten record by record: the ``.debug_pkl`` source-range records are left out (they hold
    the absolute paths of the scripted sources, the checkout's and the environment's torch; loading and running
    do not need them), every record is stored uncompressed (deflate output depends on the zlib build) with a
    fixed timestamp and its data 64-byte aligned as torch writes it, and the random ``.data/serialization_id``
    becomes a hash of the other records.
    """
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    records = [(name, data) for name, data in records if not name.endswith(".debug_pkl")]
    digest = hashlib.sha256(b"".join(data for name, data in records if not name.endswith("serialization_id")))
    stable_id = str(int(digest.hexdigest(), 16)).encode()
    records = [(name, stable_id[: len(data)] if name.endswith(".data/serialization_id") else data)
               for name, data in records]  # fmt: skip
    partial = path.with_name(f".{path.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            padding = -(archive.fp.tell() + 30 + len(name.encode()) + 4) % 64  # 30-byte header, 4-byte extra head
            info.extra = struct.pack("<HH", 0x4246, padding) + b"Z" * padding  # torch's own padding field id
            archive.writestr(info, data)
    os.replace(partial, path)


def publish(
    checkpoint: str | os.PathLike,
    model_name: str,
    output: str | os.PathLike,
    distillation: bool = False,
    fused: bool = False,
    epochs: int | None = None,
    log: str | os.PathLike | None = None,
    eval_table: str | os.PathLike | None = None,
    latency_table: str | os.PathLike | None = None,
) -> list[Path]:
    """Write upstream's artefacts and a hub folder for ``checkpoint`` into ``output``; return the files written.

    ``epochs`` defaults to the checkpoint's ``args['epochs']``; ``log`` to ``log.txt`` beside the
    checkpoint, else the run's ``args['out']/log.txt``. Raises :class:`PublishError` or
    :class:`~repnext.checkpoint.CheckpointError` (one line naming the file) before anything is written.
    """
    from timm.models import save_for_hf

    from .analysis.logs import read_log, run_metrics
    from .analysis.stats import count_macs, count_parameters, standalone_batchnorm_parameters
    from .reparam import reparameterize

    model_name = check_model_name(model_name, "--model")
    state = read_checkpoint(checkpoint)
    args = state.get("args") if isinstance(state, Mapping) and isinstance(state.get("args"), Mapping) else {}
    kwargs = dict(args.get("model_kwargs") or {})
    if args.get("model") not in (None, model_name):
        raise PublishError(f"{checkpoint}: trained as {args['model']} (its args), not --model {model_name}")
    epochs = epochs or args.get("epochs") or (state.get("epoch", -1) + 1 if isinstance(state, Mapping) else 0)
    if not epochs or epochs <= 0:
        raise PublishError(f"{checkpoint}: no epoch count in the checkpoint; pass --epochs")
    model, weights = load_weights(model_name, checkpoint, model_kwargs=kwargs)
    if weights.form != "train":
        raise PublishError(f"{checkpoint}: a fused model; publish needs the training-form checkpoint")
    if log is None:
        candidates = [Path(checkpoint).parent / "log.txt"] + (
            [Path(args["out"]) / "log.txt"] if args.get("out") else []
        )
        log = next((path for path in candidates if path.is_file()), None)
    metrics = run_metrics(read_log(log)) if log is not None else {}
    eval_top1, agreement = _eval_numbers(eval_table)
    image_size = int(args.get("img_size") or model.pretrained_cfg["input_size"][-1])
    deploy = reparameterize(model)
    numbers = CardNumbers(
        params_m=(count_parameters(deploy) + standalone_batchnorm_parameters(model)) / 1e6,
        macs_g=count_macs(deploy, image_size)[0] / 1e9, image_size=image_size, num_classes=model.num_classes,
        dataset=str(args.get("data") or "unknown"), epochs=int(epochs),
        best_top1=metrics.get("best_top1"), best_epoch=metrics.get("best_epoch"),
        eval_top1=eval_top1, agreement=agreement, latency=_latency(latency_table, model_name),
    )  # fmt: skip
    stem = release_name(model_name, int(epochs), distillation)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        write_serialized(staging / f"{stem}.pth", lambda buffer: torch.save({"model": model.state_dict()}, buffer))
        files = {"safetensors": "model.safetensors"}
        if fused:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)
                scripted = torch.jit.script(deploy)
                write_serialized(staging / f"{stem}_fused.pt", lambda buffer: torch.jit.save(scripted, buffer))
            _stabilize_torchscript(staging / f"{stem}_fused.pt")
            files["fused"] = f"{stem}_fused.pt"
        if log is not None:
            shutil.copyfile(log, staging / f"{stem}.txt")
        cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("tag", "url", "hf_hub_id", "file")}
        model.pretrained_cfg = {**cfg, "input_size": (3, image_size, image_size), "num_classes": model.num_classes,
                                "crop_pct": float(args.get("crop_pct") or cfg["crop_pct"])}  # fmt: skip
        model_config = {"label_names": list(weights.class_names)} if weights.class_names else None
        save_for_hf(model, os.fspath(staging / "hf"), model_config=model_config, model_args=kwargs or None,
                    safe_serialization=True)  # fmt: skip
        write_text(staging / "hf" / "README.md", model_card(model_name, model, numbers, files))
        for path in [staging, *staging.rglob("*")]:  # mkdtemp makes 0700, safetensors 0600: readable like any file
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(path for path in output.rglob("*") if path.is_file())
