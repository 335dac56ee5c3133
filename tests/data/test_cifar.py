import gzip
import hashlib
import io
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

import divekit.data.cifar as cifar
from divekit import DataError, load_data

NAMES = ["airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"]
COUNTS = {**{name: 2 + i % 2 for i, name in enumerate(cifar.TRAIN_FILES)}, cifar.TEST_FILE: 4}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary format written out pixel by pixel from its published description."""
    out = bytearray()
    for image, label in zip(images, labels, strict=True):
        out.append(int(label))
        for channel in range(3):  # all red values, then all green, then all blue
            for row in range(32):
                for col in range(32):
                    out.append(int(image[channel, row, col]))
    return bytes(out)


def make_files(seed: int = 0) -> tuple[dict[str, bytes], dict[str, tuple[np.ndarray, ...]]]:
    """Small batch files (2-4 records each) and the arrays they hold."""
    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    for name, count in COUNTS.items():
        images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, count)
        files[name], arrays[name] = encode(images, labels), (images, labels)
    files[cifar.META_FILE] = ("\n".join(NAMES) + "\n\n").encode()
    return files, arrays


def write_folder(root, files):
    folder = root / "cifar-10" / cifar.FOLDER
    folder.mkdir(parents=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return folder


def write_archive(root, members, links=()) -> str:
    """A real tar.gz holding ``members`` (name -> bytes) and symlinks; returns its md5."""
    (root / "cifar-10").mkdir(parents=True, exist_ok=True)
    path = root / "cifar-10" / cifar.ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return hashlib.md5(path.read_bytes()).hexdigest()


def in_folder(files):
    return {f"{cifar.FOLDER}/{name}": raw for name, raw in files.items()}


def expected_split(arrays, names):
    images = np.concatenate([arrays[name][0] for name in names])
    labels = np.concatenate([arrays[name][1] for name in names])
    return torch.from_numpy(images).double() / 255, torch.from_numpy(labels)


def check_matches(data, arrays):
    for (x, y), names in ((data.train, cifar.TRAIN_FILES), (data.test, (cifar.TEST_FILE,))):
        images, labels = expected_split(arrays, names)
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert x.shape == (len(labels), 3, 32, 32)
        torch.testing.assert_close(x.double(), images, atol=1e-7, rtol=0)
        assert torch.equal(y, labels)
    assert data.class_names == NAMES and data.num_classes == 10


def test_record_layout_is_channel_planar_rgb():
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    image[0, 1, 2] = 200  # red at row 1, column 2
    image[1, 30, 0] = 100  # green at row 30, column 0
    image[2, 0, 31] = 50  # blue at row 0, column 31
    raw = encode(image[None], np.array([7]))
    assert raw[1 + 1 * 32 + 2] == 200 and raw[1 + 1024 + 30 * 32] == 100
    assert raw[1 + 2048 + 31] == 50
    images, labels = cifar.read_cifar_batch(raw, "x.bin")
    assert images.dtype == torch.uint8 and images.shape == (1, 3, 32, 32)
    assert torch.equal(images[0], torch.from_numpy(image)) and labels.tolist() == [7]


def test_extracted_folder(tmp_path):
    files, arrays = make_files()
    write_folder(tmp_path, files)
    data = cifar.cifar10(str(tmp_path))
    check_matches(data, arrays)
    assert len(data.train[0]) == sum(COUNTS[name] for name in cifar.TRAIN_FILES)


def test_archive_read_without_extracting(tmp_path, monkeypatch):
    files, arrays = make_files()
    monkeypatch.setattr(cifar, "CIFAR10_MD5", write_archive(tmp_path, in_folder(files)))
    data = load_data("cifar-10", batch_size=4, data_dir=str(tmp_path))
    check_matches(data, arrays)
    assert sorted(p.name for p in (tmp_path / "cifar-10").iterdir()) == [cifar.ARCHIVE]


def test_incomplete_folder_falls_back_to_the_archive(tmp_path, monkeypatch):
    files, arrays = make_files()
    monkeypatch.setattr(cifar, "CIFAR10_MD5", write_archive(tmp_path, in_folder(files)))
    folder = write_folder(tmp_path, files)
    (folder / cifar.TEST_FILE).unlink()
    check_matches(cifar.cifar10(str(tmp_path)), arrays)


def test_archive_checksum_is_checked(tmp_path):
    files, _ = make_files()
    actual = write_archive(tmp_path, in_folder(files))
    with pytest.raises(DataError, match=f"has md5 {actual}, expected {cifar.CIFAR10_MD5}"):
        cifar.cifar10(str(tmp_path))


def test_normalize_standardises_each_channel_with_train_statistics(tmp_path):
    files, arrays = make_files()
    write_folder(tmp_path, files)
    data = cifar.cifar10(str(tmp_path), normalize=True)
    train, _ = expected_split(arrays, cifar.TRAIN_FILES)
    test, _ = expected_split(arrays, (cifar.TEST_FILE,))
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(data.train[0].double(), (train - mean) / std, atol=1e-5, rtol=0)
    torch.testing.assert_close(data.test[0].double(), (test - mean) / std, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_archive", [False, True])
def test_truncated_batch_names_the_file(tmp_path, monkeypatch, use_archive):
    files, _ = make_files()
    files["data_batch_3.bin"] = files["data_batch_3.bin"][:-100]
    if use_archive:
        monkeypatch.setattr(cifar, "CIFAR10_MD5", write_archive(tmp_path, in_folder(files)))
    else:
        write_folder(tmp_path, files)
    size = len(files["data_batch_3.bin"])
    with pytest.raises(DataError, match=f"data_batch_3.bin holds {size} bytes.*truncated"):
        cifar.cifar10(str(tmp_path))


def test_empty_batch_is_refused():
    with pytest.raises(DataError, match="test_batch.bin holds 0 bytes"):
        cifar.read_cifar_batch(b"", "test_batch.bin")


def test_label_out_of_range_names_file_and_record(tmp_path):
    files, _ = make_files()
    raw = bytearray(files[cifar.TEST_FILE])
    raw[2 * cifar.RECORD_BYTES] = 10
    files[cifar.TEST_FILE] = bytes(raw)
    write_folder(tmp_path, files)
    with pytest.raises(DataError, match="test_batch.bin: record 2 has label 10"):
        cifar.cifar10(str(tmp_path))


def test_wrong_number_of_class_names(tmp_path):
    files, _ = make_files()
    files[cifar.META_FILE] = b"cat\ndog\n"
    write_folder(tmp_path, files)
    with pytest.raises(DataError, match="batches.meta.txt names 2 classes"):
        cifar.cifar10(str(tmp_path))


@pytest.mark.parametrize("evil", ["../evil.bin", "/tmp/evil.bin", "cifar-10-batches-bin/../../x"])
def test_path_traversal_member_is_refused(tmp_path, monkeypatch, evil):
    files, _ = make_files()
    members = {evil: b"gotcha", **in_folder(files)}
    monkeypatch.setattr(cifar, "CIFAR10_MD5", write_archive(tmp_path, members))
    with pytest.raises(DataError, match="unsafe member name"):
        cifar.cifar10(str(tmp_path))
    assert not (tmp_path / "evil.bin").exists()


def test_linked_member_is_refused(tmp_path, monkeypatch):
    files, _ = make_files()
    members = in_folder(files)
    del members[f"{cifar.FOLDER}/{cifar.TEST_FILE}"]
    links = [(f"{cifar.FOLDER}/{cifar.TEST_FILE}", f"{cifar.FOLDER}/data_batch_1.bin")]
    monkeypatch.setattr(cifar, "CIFAR10_MD5", write_archive(tmp_path, members, links))
    with pytest.raises(DataError, match="test_batch.bin is a link or folder"):
        cifar.cifar10(str(tmp_path))


def test_archive_missing_a_member(tmp_path, monkeypatch):
    files, _ = make_files()
    del files["data_batch_5.bin"]
    monkeypatch.setattr(cifar, "CIFAR10_MD5", write_archive(tmp_path, in_folder(files)))
    with pytest.raises(DataError, match="lacks cifar-10-batches-bin/data_batch_5.bin"):
        cifar.cifar10(str(tmp_path))


def test_corrupt_archive(tmp_path, monkeypatch):
    files, _ = make_files()
    write_archive(tmp_path, in_folder(files))
    path = tmp_path / "cifar-10" / cifar.ARCHIVE
    path.write_bytes(path.read_bytes()[:200])
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="is not a readable tar.gz archive"):
        cifar.cifar10(str(tmp_path))


def test_missing_files_offline_say_which_where_and_url(tmp_path):
    with pytest.raises(DataError) as error:
        cifar.cifar10(str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "cifar-10" / cifar.ARCHIVE) in message
    assert cifar.CIFAR10_URL in message and "DIVEKIT_OFFLINE" in message
    assert "DIVEKIT_DATA" in message and "--data-dir" in message
    # A partly extracted folder is reported with what it lacks.
    files, _ = make_files()
    del files["data_batch_2.bin"]
    write_folder(tmp_path, files)
    with pytest.raises(DataError, match="lacks data_batch_2.bin"):
        cifar.cifar10(str(tmp_path))


def test_downloads_the_archive_when_the_network_is_reachable(tmp_path, monkeypatch):
    files, arrays = make_files()
    md5 = write_archive(tmp_path / "server", in_folder(files))
    handler = partial(QuietHandler, directory=str(tmp_path / "server" / "cifar-10"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(cifar, "CIFAR10_URL",
                            f"http://127.0.0.1:{server.server_address[1]}/{cifar.ARCHIVE}")
        monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
        monkeypatch.setenv("DIVEKIT_OFFLINE", "0")
        data = cifar.cifar10(str(tmp_path / "cache"))
    finally:
        server.shutdown()
        server.server_close()
    check_matches(data, arrays)
    assert (tmp_path / "cache" / "cifar-10" / cifar.ARCHIVE).is_file()


def test_member_declaring_more_than_a_batch_is_refused_before_inflating(tmp_path, monkeypatch):
    # Only the header is there: reading the declared 1 GB would fail differently (truncated).
    info = tarfile.TarInfo(f"{cifar.FOLDER}/data_batch_1.bin")
    info.size = 1 << 30
    path = tmp_path / "cifar-10" / cifar.ARCHIVE
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(info.tobuf() + bytes(4096)))
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    with pytest.raises(DataError, match="data_batch_1.bin declares 1073741824 bytes, more than"):
        cifar.cifar10(str(tmp_path))
