"""Image classification data: ImageFolder trees (the ImageNet layout) and a built-in offline dataset.

``builtin:photos`` needs no download: eight RGB photographs bundled with scikit-image, one class
per photograph (astronaut, cat, coffee, galaxies, motorcycle, retina, rocket, tissue). Training
images are random crops from the left 70% of each photograph, validation images from the right
30%, so no pixel is shared between the splits. Each crop is a square-ish box whose side is 15-35%
of the photograph's shorter side (aspect ratio 3/4 to 4/3), resampled to ``size x size`` with
bicubic interpolation. Crops are drawn from a numpy PCG64 stream per (seed, split, class), so the
images are identical on every machine and growing one split leaves the other unchanged.

:func:`materialize_dataset` writes the crops as ``root/{train,val}/<class>/NNNN.png``;
:func:`check_image_folder` validates any such tree before training.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .io import replace_dir

__all__ = [
    "BUILTIN_DATASETS",
    "DatasetError",
    "ImageListDataset",
    "build_datasets",
    "build_split",
    "check_image_folder",
    "check_split",
    "load_rgb",
    "materialize_dataset",
    "photo_crops",
]

SPLITS = ("train", "val")
BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = ("photos",)
TRAIN_FRACTION = 0.7  # columns [0, 0.7 W) feed train crops, [0.7 W, W) val crops
CROP_SIDE = (0.15, 0.35)  # crop side as a fraction of the photograph's shorter side
CROP_RATIO = (3 / 4, 4 / 3)
# What ``builtin:photos`` means when trained on directly (and the defaults of `repnext dataset`).
PHOTOS_SIZE, PHOTOS_TRAIN_PER_CLASS, PHOTOS_VAL_PER_CLASS, PHOTOS_SEED = 64, 96, 32, 0

# Class name -> loader of a bundled RGB photograph (uint8 [H, W, 3]); names are in sorted order,
# so class indices agree with torchvision's ImageFolder on the materialized tree.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "cat": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "galaxies": skimage.data.hubble_deep_field,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    "retina": skimage.data.retina,
    "rocket": skimage.data.rocket,
    "tissue": skimage.data.immunohistochemistry,
}


class DatasetError(ValueError):
    """Unusable training data; the message names the path and what is wrong."""


class ImageListDataset(Dataset):
    """In-memory images with integer targets, indexed like torchvision's ImageFolder (``classes``, ``targets``)."""

    def __init__(self, images: list[Image.Image], targets: list[int], classes: list[str], transform=None):
        self.images, self.targets, self.classes, self.transform = images, targets, classes, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[object, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.targets[index]


def photo_crops(split: str, per_class: int, size: int = 64, seed: int = 0) -> ImageListDataset:
    """``per_class`` crops of each bundled photograph from the ``split`` region, as ``size x size`` RGB images."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, targets = [], []
    for label, load in enumerate(PHOTOS.values()):
        photo = Image.fromarray(load())
        rng = np.random.default_rng([seed, SPLITS.index(split), label])
        for _ in range(per_class):
            images.append(photo.resize((size, size), Image.Resampling.BICUBIC, box=_crop_box(rng, photo, split)))
            targets.append(label)
    return ImageListDataset(images, targets, list(PHOTOS))


def _crop_box(rng: np.random.Generator, photo: Image.Image, split: str) -> tuple[float, float, float, float]:
    """A random box ``(left, top, right, bottom)`` inside the split's column range of ``photo``."""
    width, height = photo.size
    split_x = TRAIN_FRACTION * width
    x0, x1 = (0.0, split_x) if split == "train" else (split_x, float(width))
    side = rng.uniform(*CROP_SIDE) * min(width, height)
    ratio = np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1])))
    box_w, box_h = min(side * np.sqrt(ratio), x1 - x0), min(side / np.sqrt(ratio), float(height))
    left, top = x0 + rng.uniform(0, x1 - x0 - box_w), rng.uniform(0, height - box_h)
    return float(left), float(top), float(left + box_w), float(top + box_h)


def _builtin_name(spec: str) -> str | None:
    """The dataset name of a ``builtin:NAME`` spec (checked), or None for a folder path."""
    if not spec.startswith(BUILTIN_PREFIX):
        return None
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_DATASETS:
        raise DatasetError(f"{spec}: unknown built-in dataset {name!r}; available: {', '.join(BUILTIN_DATASETS)}")
    return name


def materialize_dataset(
    spec: str,
    root: str | os.PathLike,
    size: int = PHOTOS_SIZE,
    train_per_class: int = PHOTOS_TRAIN_PER_CLASS,
    val_per_class: int = PHOTOS_VAL_PER_CLASS,
    seed: int = PHOTOS_SEED,
) -> Path:
    """Write built-in dataset ``spec`` (e.g. ``builtin:photos``) as an ImageFolder tree at ``root``.

    The tree is built beside ``root`` and renamed into place, replacing any previous one, so a
    failed run leaves no partial dataset. PNGs carry no metadata: reruns are byte-identical.
    """
    if _builtin_name(spec) is None:
        raise DatasetError(f"{spec}: not a built-in dataset (expected {BUILTIN_PREFIX}NAME)")
    for value, name in ((size, "size"), (train_per_class, "train_per_class"), (val_per_class, "val_per_class")):
        if value <= 0:
            raise ValueError(f"materialize_dataset: {name} must be a positive integer, got {value}")
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(scratch, 0o777 & ~umask)  # mkdtemp creates 0700; a dataset should be as readable as any folder
    try:
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            crops = photo_crops(split, per_class, size, seed)
            for label, name in enumerate(crops.classes):
                folder = scratch / split / name
                folder.mkdir(parents=True)
                for index in range(per_class):
                    crops.images[label * per_class + index].save(folder / f"{index:04d}.png", format="PNG")
        replace_dir(scratch, root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` as torchvision's ImageFolder finds them (recursive, by extension)."""
    return sorted(
        Path(dirpath) / name
        for dirpath, _, names in os.walk(folder, followlinks=True)
        for name in names
        if name.lower().endswith(IMG_EXTENSIONS)
    )


def load_rgb(path: str) -> Image.Image:
    """ImageFolder loader whose decode errors name the file."""
    try:
        with open(path, "rb") as file, Image.open(file) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{path}: corrupt or unreadable image ({error})") from None


def check_split(root: str | os.PathLike, split: str, verify_images: bool = True) -> dict[str, int]:
    """Validate one split ``root/split/<class>/<image>`` of an ImageNet-layout tree; return its class counts."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing split folder (expected the ImageNet layout {folder}/<class>/...)")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise DatasetError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    counts = {}
    for name in classes:
        files = _image_files(folder / name)
        if not files:
            raise DatasetError(f"{folder / name}: empty class (no files ending in {', '.join(IMG_EXTENSIONS)})")
        if verify_images:
            for path in files:
                load_rgb(os.fspath(path))
        counts[name] = len(files)
    return counts


def check_image_folder(root: str | os.PathLike, verify_images: bool = True) -> dict[str, dict[str, int]]:
    """Validate an ImageNet-layout tree ``root/{train,val}/<class>/<image>``; return per-split class counts.

    Raises :class:`DatasetError` naming the path for: a missing split folder, a split with no
    class folders, a class folder with no image files, train and val class sets that differ, and
    (with ``verify_images``, which decodes every file) a corrupt image. Nothing is skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory (expected {root}/train/<class>/... and {root}/val/<class>/...)")
    counts = {split: check_split(root, split, verify_images) for split in SPLITS}
    differ = sorted(set(counts["train"]) ^ set(counts["val"]))
    if differ:
        raise DatasetError(f"{root}: train and val have different classes ({len(differ)} differ, e.g. {differ[0]!r})")
    return counts


def build_datasets(spec: str, train_transform=None, val_transform=None,
                   verify_images: bool = True) -> tuple[Dataset, Dataset]:  # fmt: skip
    """The train and val splits of ``spec``: ``builtin:NAME`` (in memory) or a checked ImageFolder tree.

    Both have ``classes`` (sorted names) and ``targets`` like torchvision's ImageFolder; a built-in
    dataset is exactly what :func:`materialize_dataset` writes with its defaults.
    """
    if _builtin_name(spec) is not None:
        train = photo_crops("train", PHOTOS_TRAIN_PER_CLASS, PHOTOS_SIZE, PHOTOS_SEED)
        val = photo_crops("val", PHOTOS_VAL_PER_CLASS, PHOTOS_SIZE, PHOTOS_SEED)
        train.transform, val.transform = train_transform, val_transform
        return train, val
    check_image_folder(spec, verify_images)
    root = Path(spec)
    return (
        ImageFolder(os.fspath(root / "train"), transform=train_transform, loader=load_rgb),
        ImageFolder(os.fspath(root / "val"), transform=val_transform, loader=load_rgb),
    )


def build_split(spec: str, split: str = "val", transform=None, verify_images: bool = True) -> Dataset:
    """One split of ``spec`` (``builtin:NAME`` or an ImageFolder tree), classes in sorted order as torchvision's."""
    if _builtin_name(spec) is not None:
        if split not in SPLITS:
            raise DatasetError(f"{spec}: no split {split!r}; available: {', '.join(SPLITS)}")
        per_class = PHOTOS_TRAIN_PER_CLASS if split == "train" else PHOTOS_VAL_PER_CLASS
        dataset = photo_crops(split, per_class, PHOTOS_SIZE, PHOTOS_SEED)
        dataset.transform = transform
        return dataset
    if not Path(spec).is_dir():
        raise DatasetError(f"{spec}: no such directory (expected {spec}/{split}/<class>/...)")
    check_split(spec, split, verify_images)
    return ImageFolder(os.fspath(Path(spec) / split), transform=transform, loader=load_rgb)
