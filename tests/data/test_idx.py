import gzip
import hashlib
import shutil
import struct
import threading
import tracemalloc
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from divekit import DataError, load_data
from divekit.data.vision import FASHION_MNIST, IdxDataset, read_idx
from tests.conftest import real_data_dir


def write_idx(path, array: np.ndarray, compress: bool = True) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    data = gzip.compress(raw) if compress else raw
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, images, compress)
    assert torch.equal(read_idx(path), torch.from_numpy(images))


def test_truncated_file_is_a_clear_error(tmp_path):
    raw = gzip.decompress(write_idx(tmp_path / "a.gz", np.zeros((10, 28, 28))))
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "short.gz")
    # A gzip stream cut in the middle is caught too.
    (tmp_path / "cut.gz").write_bytes((tmp_path / "a.gz").read_bytes()[:40])
    with pytest.raises(DataError, match="not a readable idx file"):
        read_idx(tmp_path / "cut.gz")


def test_wrong_magic_number(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"PK\x03\x04 this is a zip"))
    with pytest.raises(DataError, match="idx magic number"):
        read_idx(tmp_path / "bad.gz")


def make_fake_idx_dataset(folder, base_url="http://127.0.0.1:9/"):
    """Write a tiny MNIST-style dataset and describe it with its real checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for prefix, n in (("train", 20), ("t10k", 8)):
        for kind, array in (("images", rng.integers(0, 256, (n, 28, 28))),
                            ("labels", rng.integers(0, 10, n))):
            name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
            md5[name] = hashlib.md5(write_idx(folder / name, array)).hexdigest()
    return IdxDataset("tiny", base_url, md5, [str(i) for i in range(10)])


def test_missing_files_offline_name_files_folder_and_remedy(tmp_path):
    with pytest.raises(DataError) as error:
        FASHION_MNIST.fetch(str(tmp_path))
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "fashion-mnist") in message
    assert "DIVEKIT_DATA" in message and "--data-dir" in message


def test_checksum_mismatch_is_reported(tmp_path):
    dataset = make_fake_idx_dataset(tmp_path / "tiny")
    with open(tmp_path / "tiny" / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(12)
        f.write(b"\xff")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz has md5 .* expected"):
        dataset.fetch(str(tmp_path))


def test_downloads_missing_files_when_network_is_reachable(tmp_path, monkeypatch):
    served = tmp_path / "server"
    served.mkdir()
    dataset = make_fake_idx_dataset(served)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dataset.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setenv("DIVEKIT_OFFLINE", "0")
        root = dataset.fetch(str(tmp_path / "cache"))
        data = dataset.load(str(tmp_path / "cache"), "tiny")
    finally:
        server.shutdown()
    assert root == tmp_path / "cache" / "tiny"
    assert sorted(p.name for p in root.iterdir()) == sorted(dataset.md5)
    assert data.train[0].shape == (20, 1, 28, 28) and data.test[1].shape == (8,)


def test_fashion_mnist_real_files():
    root = real_data_dir("fashion-mnist")
    data = load_data("fashion-mnist", data_dir=str(root))
    assert data.train[0].shape == (60000, 1, 28, 28) and data.test[0].shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train[1]).tolist() == [6000] * 10
    assert torch.bincount(data.test[1]).tolist() == [1000] * 10
    assert data.class_names[9] == "ankle boot"
    assert 0.28 < data.train[0].mean().item() < 0.29  # the published pixel mean is 0.2860


def test_mnist_real_files(tmp_path):
    root = real_data_dir("mnist")
    data = load_data("mnist", data_dir=str(root))
    assert data.train[0].shape == (60000, 1, 28, 28)
    assert torch.bincount(data.test[1]).tolist()[:2] == [980, 1135]  # published class counts
    # A corrupted copy of one file is refused with its name.
    copy = tmp_path / "mnist"
    shutil.copytree(root / "mnist", copy)
    (copy / "train-labels-idx1-ubyte.gz").write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz has md5"):
        load_data("mnist", data_dir=str(tmp_path))


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    # The header declares 10 bytes; the gzip stream inflates to 50 MB of zeros behind it.
    header = struct.pack(">BBBBI", 0, 0, 0x08, 1, 10)
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(header + bytes(50 << 20), compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"header \(10,\) needs 18; the file is truncated"):
            read_idx(tmp_path / "bomb.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # a full inflate would hold 50 MB


def test_one_byte_more_than_the_header_declares_is_refused(tmp_path):
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = gzip.decompress(write_idx(tmp_path / "ok.gz", images))
    (tmp_path / "long.gz").write_bytes(gzip.compress(raw + b"\0"))
    with pytest.raises(DataError, match="more bytes but its header"):
        read_idx(tmp_path / "long.gz")
    (tmp_path / "long.idx").write_bytes(raw + b"\0")
    with pytest.raises(DataError, match="more bytes but its header"):
        read_idx(tmp_path / "long.idx")


def test_header_cut_short_and_huge_shape_are_clear_errors(tmp_path):
    (tmp_path / "cut.gz").write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 0x08, 3, 5)))
    with pytest.raises(DataError, match="ends inside its idx header"):
        read_idx(tmp_path / "cut.gz")
    # 2^32-1 cubed elements: no memory to hold it; refused before reading any data.
    huge = struct.pack(">BBBB3I", 0, 0, 0x08, 3, *[2**32 - 1] * 3)
    (tmp_path / "huge.gz").write_bytes(gzip.compress(huge + bytes(100)))
    with pytest.raises(DataError, match=r"\(4294967295, 4294967295, 4294967295\), too large"):
        read_idx(tmp_path / "huge.gz")
