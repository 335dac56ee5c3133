"""Image classification datasets of the course: Fashion-MNIST, MNIST and an embedded default.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) and MNIST (LeCun et al. 1998) are read from their
original idx files; the embedded ``digits`` set (scikit-learn's copy of the UCI 8x8 optical
digits) needs no network and is upsampled to 28x28 so the same models run on it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from divekit.data.download import fetch_missing, verify_digest
from divekit.data.paths import data_root
from divekit.data.registry import DataModule, register_dataset
from divekit.errors import DataError

_IDX_TYPES = {0x08: np.uint8}
_READ_CHUNK = 1 << 20  # bytes inflated per read: bounds the overshoot past a lying header


def read_idx(path: Path) -> torch.Tensor:
    """Read an idx file (optionally gzipped) as a uint8 tensor shaped by its header.

    The header is two zero bytes, a type byte (0x08 = unsigned byte), the number of
    dimensions, then one big-endian uint32 per dimension. The gzip stream is inflated
    incrementally and never past the size the header declares (plus one byte to notice excess
    data), so a gzip bomb is refused after a few kilobytes of output instead of filling memory.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return _read_idx_stream(path, f)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} is not a readable idx file ({e}); delete it and fetch it again"
        ) from e


def _read_idx_stream(path: Path, f: BinaryIO) -> torch.Tensor:
    """Parse the header of the open idx stream ``f``, then read exactly the bytes it declares."""
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_TYPES:
        raise DataError(f"{path} does not start with an idx magic number; it is not an idx file")
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path} ends inside its idx header; the file is truncated or corrupt: "
                        "delete it and fetch it again")
    shape = struct.unpack(f">{ndim}I", dims)
    header, count = 4 + 4 * ndim, math.prod(shape)
    try:
        # Pages are touched only as data arrives, so a header that lies costs no memory.
        array = np.empty(count, dtype=_IDX_TYPES[magic[2]])
    except (MemoryError, ValueError) as e:
        raise DataError(f"{path}: its header declares the shape {tuple(shape)}, too large to "
                        "load; the file is corrupt: delete it and fetch it again") from e
    view, filled = memoryview(array).cast("B"), 0
    while filled < count and (n := f.readinto(view[filled : filled + _READ_CHUNK])):
        filled += n
    if filled < count or f.read(1):
        size = f"{header + filled} bytes" if filled < count else "more bytes"
        raise DataError(
            f"{path} holds {size} but its header {tuple(shape)} needs {header + count}; "
            "the file is truncated or corrupt: delete it and fetch it again"
        )
    return torch.from_numpy(array.reshape(shape))


class IdxDataset:
    """The four idx files of an MNIST-style dataset: where to get them and their checksums."""

    def __init__(self, folder: str, base_url: str, md5: dict[str, str], classes: list[str]):
        self.folder, self.base_url, self.md5, self.classes = folder, base_url, md5, classes

    def fetch(self, data_dir: str | None) -> Path:
        """Return the folder holding all four verified files, downloading missing ones."""
        root = data_root(data_dir) / self.folder
        for name, md5 in self.md5.items():
            reason = fetch_missing(self.base_url + name, root / name, md5)
            if reason:  # offline, or the mirror failed: the others would fail alike
                break
        missing = [name for name in self.md5 if not (root / name).is_file()]
        if missing:
            raise DataError(
                f"{self.folder} files missing in {root}: {', '.join(missing)}.{reason} "
                f"Put the original files from {self.base_url} in that folder, or point "
                f"--data-dir / DIVEKIT_DATA at a folder that has a '{self.folder}' sub-folder."
            )
        for name, expected in self.md5.items():
            verify_digest(root / name, expected)
        return root

    def load(self, data_dir: str | None, name: str) -> DataModule:
        root = self.fetch(data_dir)

        def split(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
            images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"{root}: {prefix} images {tuple(images.shape)} and labels "
                                f"{tuple(labels.shape)} do not match")
            return images.unsqueeze(1).float().div_(255), labels.long()

        return DataModule(name, train=split("train"), test=split("t10k"), class_names=self.classes)


FASHION_MNIST = IdxDataset(
    "fashion-mnist",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    ["t-shirt", "trouser", "pullover", "dress", "coat",
     "sandal", "shirt", "sneaker", "bag", "ankle boot"],
)

MNIST = IdxDataset(
    "mnist",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    [str(d) for d in range(10)],
)


def _normalized(data: DataModule, normalize: bool) -> DataModule:
    """Standardise every split with the training split's mean and standard deviation."""
    if normalize:
        mean, std = data.train[0].mean(), data.train[0].std()
        data.train, data.test = [((x - mean) / std, y) for x, y in (data.train, data.test)]
        data.normalization = (mean.reshape(1), std.reshape(1))
    return data


@register_dataset("fashion-mnist", section="4.2 The Image Classification Dataset",
                  files=tuple(FASHION_MNIST.md5))
def fashion_mnist(data_dir: str | None = None, normalize: bool = False) -> DataModule:
    """Fashion-MNIST: 70,000 28x28 grey images of clothing in 10 classes (60k train / 10k test)."""
    return _normalized(FASHION_MNIST.load(data_dir, "fashion-mnist"), normalize)


@register_dataset("mnist", section="4.2 The Image Classification Dataset", files=tuple(MNIST.md5))
def mnist(data_dir: str | None = None, normalize: bool = False) -> DataModule:
    """MNIST: 70,000 28x28 grey handwritten digits (60k train / 10k test)."""
    return _normalized(MNIST.load(data_dir, "mnist"), normalize)


@register_dataset("digits", section="embedded default (no network)")
def digits(data_dir: str | None = None, normalize: bool = False, size: int = 28) -> DataModule:
    """Embedded: 1,797 handwritten 8x8 digits from scikit-learn, upsampled to 28x28."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    data = DataModule("digits", train=(images[train], labels[train]),
                      test=(images[test], labels[test]), class_names=[str(d) for d in range(10)])
    return _normalized(data, normalize)
