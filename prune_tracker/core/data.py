"""CIFAR-10 / CIFAR-100 / synthetic data, decoded once into uint8 tensors and augmented per batch as tensors.

Sources, in the order they are tried for `cifar10` / `cifar100`:
- `data_dir` given: an existing torchvision CIFAR root, an ImageFolder tree (`train/<class>/*`,
  `test/<class>/*`, possibly under one top folder), or a `.tar` / `.tar.gz` archive of such a tree
  (read without unpacking). Nothing is downloaded.
- no `data_dir`: torchvision's CIFAR download into the cache directory (`$PRUNE_TRACKER_CACHE`,
  default `~/.cache/prune-tracker`).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DATASETS = ("cifar10", "cifar100", "synthetic")
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 4000, 1000
AUTO = "auto"  # val_size: 5,000 images from a CIFAR-sized training set, else 10% of it (see resolve_val_size)
CIFAR_VAL_SIZE, CIFAR_TRAIN_SIZE = 5000, 50_000


class DataError(ValueError):
    """Data could not be found or read; the message says what was looked for and how to fix it."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, (N, 3, 32, 32)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class DataSplits:
    dataset: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    info: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_cache_dir() -> Path:
    return Path(os.environ.get("PRUNE_TRACKER_CACHE", Path.home() / ".cache" / "prune-tracker"))


# ---------------------------------------------------------------- reading sources


def _from_numpy_hwc(images: np.ndarray, labels) -> ImageSet:
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(tensor, torch.as_tensor(np.asarray(labels), dtype=torch.int64))


def _torchvision_class(dataset: str):
    from torchvision import datasets

    return datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100


def _is_torchvision_root(root: Path, dataset: str) -> bool:
    folder = "cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python"
    return (root / folder).is_dir()


def _read_torchvision(root: Path, dataset: str, download: bool) -> tuple[ImageSet, ImageSet, list[str]]:
    cls = _torchvision_class(dataset)
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    return _from_numpy_hwc(train.data, train.targets), _from_numpy_hwc(test.data, test.targets), train.classes


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"))
    if array.shape != (32, 32, 3):
        raise DataError(f"expected 32x32 RGB images, found an image of shape {array.shape}")
    return array


def _split_of(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) of an image path `.../train|test/<class>/<file>`, or None."""
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        return parts[-3], parts[-2]
    return None


def _assemble(items: list[tuple[str, str, bytes]], origin: str) -> tuple[ImageSet, ImageSet, list[str]]:
    classes = sorted({cls for split, cls, _ in items if split == "train"})
    if not classes or not any(split == "test" for split, _, _ in items):
        raise DataError(f"{origin}: no train/<class>/ and test/<class>/ image folders found")
    index = {name: i for i, name in enumerate(classes)}
    sets = []
    for wanted in ("train", "test"):
        rows = [(data, cls) for split, cls, data in items if split == wanted]
        unknown = {cls for _, cls in rows} - set(index)
        if unknown:
            raise DataError(f"{origin}: test classes {sorted(unknown)} are missing from train/")
        images = np.stack([_decode(data) for data, _ in rows])
        sets.append(_from_numpy_hwc(images, [index[cls] for _, cls in rows]))
    return sets[0], sets[1], classes


def _read_image_folder(root: Path) -> tuple[ImageSet, ImageSet, list[str]]:
    items = []
    for path in sorted(root.rglob("*")):
        found = _split_of(path.relative_to(root).parts)
        if found and path.suffix.lower() in IMAGE_SUFFIXES:
            items.append((found[0], found[1], path.read_bytes()))
    return _assemble(items, str(root))


def _read_archive(path: Path) -> tuple[ImageSet, ImageSet, list[str]]:
    items = []
    with tarfile.open(path) as archive:
        for member in archive:
            found = _split_of(Path(member.name).parts)
            if member.isfile() and found and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                items.append((found[0], found[1], archive.extractfile(member).read()))
    return _assemble(items, str(path))


def _decoded_cache_path(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return default_cache_dir() / "decoded" / f"{path.name}-{key}.pt"


def _read_archive_cached(path: Path) -> tuple[ImageSet, ImageSet, list[str]]:
    """Decoding 60k JPEGs takes a while on 2 cores, so the decoded uint8 tensors are cached."""
    cache = _decoded_cache_path(path)
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return ImageSet(*blob["train"]), ImageSet(*blob["test"]), list(blob["classes"])
    train, test, classes = _read_archive(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(
        {"train": (train.images, train.labels), "test": (test.images, test.labels), "classes": classes}, tmp
    )
    tmp.replace(cache)
    return train, test, classes


def _read_local(data_dir: Path, dataset: str) -> tuple[ImageSet, ImageSet, list[str], str]:
    if not data_dir.exists():
        raise DataError(
            f"data_dir {str(data_dir)!r} does not exist; point it at a torchvision CIFAR root, "
            "an ImageFolder tree (train/<class>/, test/<class>/) or a .tar/.tar.gz of one"
        )
    if data_dir.is_file():
        if not tarfile.is_tarfile(data_dir):
            raise DataError(f"data_dir {str(data_dir)!r} is a file but not a .tar/.tar.gz archive")
        return (*_read_archive_cached(data_dir), f"archive:{data_dir}")
    if _is_torchvision_root(data_dir, dataset):
        try:
            return (*_read_torchvision(data_dir, dataset, download=False), f"torchvision:{data_dir}")
        except RuntimeError as err:  # torchvision's integrity check
            raise DataError(f"torchvision {dataset} root {str(data_dir)!r} is unreadable: {err}") from None
    return (*_read_image_folder(data_dir), f"imagefolder:{data_dir}")


def _download(dataset: str) -> tuple[ImageSet, ImageSet, list[str], str]:
    root = default_cache_dir() / "torchvision"
    if _is_torchvision_root(root, dataset):
        return (*_read_torchvision(root, dataset, download=False), f"torchvision:{root}")
    try:
        return (*_read_torchvision(root, dataset, download=True), f"torchvision-download:{root}")
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise DataError(
            f"could not download {dataset} into {root} ({type(err).__name__}: {err}); without network, "
            f"pass data_dir=<torchvision CIFAR root | ImageFolder tree | .tar.gz archive>"
        ) from None


# ---------------------------------------------------------------- synthetic data


def synthetic_images(n: int, num_classes: int, seed: int) -> ImageSet:
    """Class-dependent, learnable CIFAR-shaped images: a smooth per-class colour pattern plus noise and a
    random shift, so a small CNN learns it well above chance in an epoch or two."""
    gen = torch.Generator().manual_seed(10_000 + num_classes)  # prototypes depend on the class count only
    prototypes = F.interpolate(
        torch.rand(num_classes, 3, 4, 4, generator=gen), size=(32, 32), mode="bilinear", align_corners=False
    )
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    images = prototypes[labels] + 0.25 * torch.randn(n, 3, 32, 32, generator=gen)
    shifts = torch.randint(-2, 3, (n, 2), generator=gen).tolist()
    rolled = [torch.roll(img, shifts=shift, dims=(1, 2)) for img, shift in zip(images, shifts, strict=True)]
    images = torch.stack(rolled)
    return ImageSet((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)


# ---------------------------------------------------------------- splits


def balanced_indices(
    labels: torch.Tensor, per_class_count: dict[int, int], gen: torch.Generator
) -> torch.Tensor:
    chosen = []
    for cls, count in per_class_count.items():
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:count]])
    return torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.int64)


def _class_quota(labels: torch.Tensor, total: int) -> dict[int, int]:
    classes = torch.unique(labels).tolist()
    base, extra = divmod(total, len(classes))
    return {cls: base + (1 if i < extra else 0) for i, cls in enumerate(classes)}


def resolve_val_size(val_size: int | str, dataset: str, n_train: int) -> int:
    """The validation size for a training set of `n_train` images (before `train_subset`, which is taken
    from what the validation split leaves). `"auto"`: 5,000 when the set has the full 50,000 CIFAR
    training images, else 10% of it (e.g. 400 of synthetic's 4,000). An explicit integer (or a string of
    one, as the CLI passes) wins and must be in [0, n_train - 1]; anything else is a one-line DataError."""
    if val_size == AUTO:
        return CIFAR_VAL_SIZE if n_train >= CIFAR_TRAIN_SIZE else n_train // 10
    text = str(val_size).strip()
    integer = isinstance(val_size, (int, str)) and not isinstance(val_size, bool) and text.isdigit()
    if integer and int(text) < n_train:
        return int(text)
    raise DataError(
        f"val_size={val_size!r} must be {AUTO!r} or an integer in [0, {n_train - 1}] "
        f"for {dataset}'s {n_train} training images"
    )


def split_train_val(
    train: ImageSet, val_size: int, train_subset: int, seed: int
) -> tuple[ImageSet, ImageSet]:
    """A class-balanced validation split carved from the training set, then a class-balanced
    `train_subset` of what is left (0 = all). Both fixed by `seed`."""
    if val_size < 0 or val_size >= len(train):
        raise DataError(f"val_size={val_size} must be in [0, {len(train) - 1}] for this training set")
    gen = torch.Generator().manual_seed(seed)
    val_index = (
        balanced_indices(train.labels, _class_quota(train.labels, val_size), gen)
        if val_size
        else torch.empty(0, dtype=torch.int64)
    )
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val_index] = False
    rest_index = torch.nonzero(keep).flatten()
    if train_subset < 0:
        raise DataError(f"train_subset={train_subset} must be >= 0 (0 = the whole training set)")
    if train_subset and train_subset < len(rest_index):
        rest_labels = train.labels[rest_index]
        rest_index = rest_index[balanced_indices(rest_labels, _class_quota(rest_labels, train_subset), gen)]
    return train.subset(rest_index), train.subset(val_index)


def load_splits(
    dataset: str,
    data_dir: str | None = None,
    train_subset: int = 0,
    val_size: int | str = AUTO,
    seed: int = 0,
    num_classes: int | None = None,
) -> DataSplits:
    """Load a dataset as uint8 tensors with train / val / test splits. `val_size`: see
    `resolve_val_size` ("auto": 5,000 for CIFAR, 10% of a smaller training set). `num_classes` sets the
    class count of `synthetic` (default 10)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if dataset == "synthetic":
        classes_n = num_classes or 10
        full_train = synthetic_images(SYNTHETIC_TRAIN, classes_n, seed=1)
        test = synthetic_images(SYNTHETIC_TEST, classes_n, seed=2)
        classes, source = [f"class_{i}" for i in range(classes_n)], "synthetic"
    elif data_dir:
        full_train, test, classes, source = _read_local(Path(data_dir).expanduser(), dataset)
    else:
        full_train, test, classes, source = _download(dataset)
    if dataset in NUM_CLASSES and len(classes) != NUM_CLASSES[dataset]:
        raise DataError(
            f"{source} has {len(classes)} classes, but {dataset} has {NUM_CLASSES[dataset]}; check data_dir"
        )
    val_count = resolve_val_size(val_size, dataset, len(full_train))
    train, val = split_train_val(full_train, val_count, train_subset, seed)
    mean, std = NORMALIZATION[dataset]
    return DataSplits(dataset, train, val, test, classes, mean, std, source)


# ---------------------------------------------------------------- batches


@dataclass(frozen=True)
class Order:
    """How a loader walks its images: in a random order (`shuffle`), with random crops and flips (`augment`),
    both drawn from `seed`; `drop_last` drops a last, smaller batch (training). The default: in order, as is."""

    shuffle: bool = False
    augment: bool = False
    seed: int = 0
    drop_last: bool = False


TRAINING = Order(shuffle=True, augment=True)


class BatchLoader:
    """Iterates normalised float batches from uint8 tensors held in memory (on `device`), in `order`.

    Augmentation (random 4-pixel-padded crop + horizontal flip) is done for the whole batch as one
    gather: the flip is folded into the column index, so it costs about as much as the copy itself."""

    def __init__(self, images: ImageSet, batch_size: int, mean, std, *, order: Order = Order(),
                 device: torch.device | str = "cpu", channels_last: bool = True):
        self.device = torch.device(device)
        self.images = images.images.to(self.device)
        self.labels = images.labels.to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, order.shuffle, order.augment
        self.channels_last, self.drop_last = channels_last, order.drop_last
        seed = order.seed
        self.scale = (torch.tensor(std, device=self.device) * 255).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, device=self.device) * 255).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._arange32 = torch.arange(32, device=self.device)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _random_crop_flip(self, batch: torch.Tensor) -> torch.Tensor:
        b = batch.shape[0]
        padded = F.pad(batch, (4, 4, 4, 4))
        offsets = torch.randint(0, 9, (2, b), generator=self.generator, device=self.device)
        rows = offsets[0, :, None] + self._arange32
        cols = offsets[1, :, None] + self._arange32
        flip = torch.rand(b, generator=self.generator, device=self.device) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        batch_idx = torch.arange(b, device=self.device)[:, None, None, None]
        chan_idx = torch.arange(3, device=self.device)[None, :, None, None]
        return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        out = (batch.float() - self.shift) / self.scale
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator, device=self.device) if self.shuffle else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = (
                order[start : start + self.batch_size]
                if order is not None
                else slice(start, start + self.batch_size)
            )
            batch = self.images[index]
            if self.augment:
                batch = self._random_crop_flip(batch)
            yield self.normalise(batch), self.labels[index]
