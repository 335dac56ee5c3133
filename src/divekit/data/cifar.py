"""14.13 Image classification on CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features
from Tiny Images"), read from its original binary distribution.

The set is published in three forms; this module reads ``cifar-10-binary.tar.gz`` only. The
"python version" holds pickles, and unpickling a downloaded file can run arbitrary code. The
archive holds the folder ``cifar-10-batches-bin/`` with five training batches
``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin`` (10,000 records each) and
``batches.meta.txt`` (the class names, one per line). Either the archive or that extracted
folder may sit in ``<data_root>/cifar-10/``; the archive is read in place, nothing is extracted.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from divekit.data.download import fetch_missing, verify_digest
from divekit.data.paths import data_root
from divekit.data.registry import DataModule, register_dataset
from divekit.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# Read when the archive is checked (not bound at import), so tests can put in their own md5.
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
NUM_CLASSES = 10
RECORD_BYTES = 1 + 3 * 32 * 32
FILE_BYTES = 10_000 * RECORD_BYTES  # the largest file of the archive: one batch


def read_cifar_batch(raw: bytes, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the records of one CIFAR-10 binary batch file.

    A record is one label byte followed by 3072 pixel bytes: the 1024 red values of the 32x32
    image row by row, then the 1024 green, then the 1024 blue ones. The pixels of a record are
    therefore already channel-first and reshape to ``(3, 32, 32)`` without reordering.

    Args:
        raw: the bytes of the file.
        source: where the bytes came from, for error messages.

    Returns:
        ``(images, labels)``: uint8 images of shape ``(N, 3, 32, 32)`` and int64 labels in
        ``0..9`` of shape ``(N,)``, with ``N = len(raw) / 3073``.
    """
    if not raw or len(raw) % RECORD_BYTES:
        raise DataError(
            f"{source} holds {len(raw)} bytes, but a CIFAR-10 batch file holds whole records of "
            f"{RECORD_BYTES} bytes (1 label byte + 3072 pixel bytes): the file is truncated or "
            "corrupt; delete it and fetch it again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if len(bad):
        raise DataError(f"{source}: record {bad[0]} has label {labels[bad[0]]}, but CIFAR-10 "
                        "labels are 0..9; the file is corrupt or not a CIFAR-10 batch")
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _read_folder(folder: Path) -> dict[str, tuple[str, bytes]]:
    """The files of the extracted folder, as ``name -> (source, bytes)``."""
    try:
        return {name: (str(folder / name), (folder / name).read_bytes()) for name in FILES}
    except OSError as e:
        raise DataError(f"cannot read the CIFAR-10 files in {folder}: {e}") from e


def _read_archive(archive: Path) -> dict[str, tuple[str, bytes]]:
    """The files inside the archive, as ``name -> (source, bytes)``, read without extracting.

    Members are read in the order they are stored, so the gzip stream is decompressed once.
    """
    wanted = {f"{FOLDER}/{name}": name for name in FILES}
    found = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                # Nothing is written to disk, but such a name means the archive was tampered with.
                parts = PurePosixPath(member.name).parts
                if member.name.startswith(("/", "\\")) or ".." in parts:
                    raise DataError(f"{archive} holds the unsafe member name {member.name!r}; it "
                                    "is not the original CIFAR-10 archive, delete it")
                name = wanted.get(member.name)
                if name is None:
                    continue
                if not member.isfile():
                    raise DataError(f"{archive}: {member.name} is a link or folder, not a file; "
                                    "it is not the original CIFAR-10 archive, delete it")
                # The size is declared in the member's header: check it before inflating.
                if member.size > FILE_BYTES:
                    raise DataError(f"{archive}: {member.name} declares {member.size} bytes, "
                                    f"more than a CIFAR-10 file holds ({FILE_BYTES}); it is not "
                                    "the original CIFAR-10 archive, delete it")
                found[name] = (f"{archive}:{member.name}", tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive} is not a readable tar.gz archive ({e}); delete it and fetch "
                        "it again") from e
    missing = [f"{FOLDER}/{name}" for name in FILES if name not in found]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}; it is not the original "
                        "CIFAR-10 archive, delete it and fetch it again")
    return found


def fetch_cifar10(data_dir: str | None = None) -> dict[str, tuple[str, bytes]]:
    """The seven CIFAR-10 files as ``name -> (source, bytes)``, downloading the archive if needed.

    The extracted ``cifar-10-batches-bin/`` folder is used when it is complete; otherwise the
    archive, after its md5 is checked.
    """
    root = data_root(data_dir) / "cifar-10"
    folder, archive = root / FOLDER, root / ARCHIVE
    missing = [name for name in FILES if not (folder / name).is_file()]
    if not missing:
        return _read_folder(folder)
    reason = fetch_missing(CIFAR10_URL, archive, CIFAR10_MD5)
    if not archive.is_file():
        partial = (f" The folder {folder} lacks {', '.join(missing)}." if folder.is_dir() else "")
        raise DataError(
            f"cifar-10 file missing: {archive}.{partial}{reason} Put the original {ARCHIVE} "
            f"from {CIFAR10_URL} (or its extracted {FOLDER}/ folder) in {root}, or point "
            "--data-dir / DIVEKIT_DATA at a folder that has a 'cifar-10' sub-folder."
        )
    verify_digest(archive, CIFAR10_MD5)
    return _read_archive(archive)


def _class_names(source: str, raw: bytes) -> list[str]:
    try:
        names = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{source} is not a text file of class names: {e}") from e
    if len(names) != NUM_CLASSES:
        raise DataError(f"{source} names {len(names)} classes, CIFAR-10 has {NUM_CLASSES}")
    return names


def _standardized(data: DataModule, normalize: bool) -> DataModule:
    """Standardise each colour channel with the training split's mean and standard deviation."""
    if normalize:
        images = data.train[0]
        mean = images.mean(dim=(0, 2, 3), keepdim=True)
        std = images.std(dim=(0, 2, 3), keepdim=True)
        data.train, data.test = [((x - mean) / std, y) for x, y in (data.train, data.test)]
        data.normalization = (mean.flatten(), std.flatten())
    return data


@register_dataset("cifar-10", section="14.13 Image Classification (CIFAR-10) on Kaggle",
                  files=(ARCHIVE,))
def cifar10(data_dir: str | None = None, normalize: bool = False) -> DataModule:
    """CIFAR-10: 60,000 32x32 colour images in 10 classes (50k train / 10k test).

    Args:
        data_dir: folder holding the ``cifar-10/`` sub-folder.
        normalize: standardise each colour channel with the training split's statistics;
            otherwise pixels are in ``[0, 1]``.

    Returns:
        A :class:`DataModule` with float images of shape ``(N, 3, 32, 32)`` and int64 labels;
        the training split is the five training batches in order.
    """
    files = fetch_cifar10(data_dir)

    def split(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*(read_cifar_batch(files[name][1], files[name][0])
                               for name in names), strict=True)
        return torch.cat(images).float().div_(255), torch.cat(labels)

    data = DataModule("cifar-10", train=split(TRAIN_FILES), test=split((TEST_FILE,)),
                      class_names=_class_names(*files[META_FILE]))
    return _standardized(data, normalize)
