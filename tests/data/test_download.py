"""Tests for divekit.data.download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from divekit.data.download import download, file_digest
from divekit.errors import DataError

PAYLOAD = os.urandom(300_000)
SLEEP_S = 2.0
CLIENT_TIMEOUT_S = 0.5


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/missing":
            self.send_error(404, "Not Found")
        elif self.path == "/slow":
            time.sleep(SLEEP_S)
            self._send_body(b"too late")
        elif self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            self.close_connection = True
        else:
            super().do_GET()

    def _send_body(self, body: bytes) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture
def served(tmp_path: Path):
    """Serve files from ``tmp_path / "www"``; yields (base URL, serve directory)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "payload.bin").write_bytes(PAYLOAD)

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def test_success_is_byte_identical_and_verified(served, out: Path) -> None:
    base, _ = served
    dest = out / "nested" / "payload.bin"
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()

    result = download(f"{base}/payload.bin", dest, md5=md5, sha256=sha256, chunk_size=4096)

    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert file_digest(dest) == md5
    assert file_digest(dest, "sha256") == sha256
    assert _leftovers(dest.parent) == []


def test_checksum_mismatch_discards_file(served, out: Path) -> None:
    base, _ = served
    dest = out / "payload.bin"
    with pytest.raises(DataError, match="checksum") as excinfo:
        download(f"{base}/payload.bin", dest, md5="0" * 32)
    assert "md5" in str(excinfo.value) and hashlib.md5(PAYLOAD).hexdigest() in str(excinfo.value)
    assert list(out.iterdir()) == []


def test_sha256_mismatch_discards_file(served, out: Path) -> None:
    base, _ = served
    dest = out / "payload.bin"
    with pytest.raises(DataError, match="checksum mismatch .* sha256"):
        download(f"{base}/payload.bin", dest, md5=hashlib.md5(PAYLOAD).hexdigest(),
                 sha256="f" * 64)
    assert list(out.iterdir()) == []


def test_failed_download_leaves_existing_dest_untouched(served, out: Path) -> None:
    base, _ = served
    dest = out / "payload.bin"
    dest.write_bytes(b"previous contents")
    mtime = dest.stat().st_mtime_ns
    with pytest.raises(DataError, match="checksum"):
        download(f"{base}/payload.bin", dest, md5="0" * 32)
    assert dest.read_bytes() == b"previous contents"
    assert dest.stat().st_mtime_ns == mtime
    assert [p.name for p in out.iterdir()] == ["payload.bin"]


def test_http_404(served, out: Path) -> None:
    base, _ = served
    dest = out / "missing.bin"
    with pytest.raises(DataError, match="404") as excinfo:
        download(f"{base}/missing", dest)
    assert f"{base}/missing" in str(excinfo.value)
    assert list(out.iterdir()) == []


def test_timeout(served, out: Path) -> None:
    base, _ = served
    dest = out / "slow.bin"
    start = time.monotonic()
    with pytest.raises(DataError, match="timed out"):
        download(f"{base}/slow", dest, timeout=CLIENT_TIMEOUT_S)
    assert time.monotonic() - start < SLEEP_S
    assert list(out.iterdir()) == []


def test_truncated_body(served, out: Path) -> None:
    base, _ = served
    dest = out / "truncated.bin"
    with pytest.raises(DataError, match="truncated|closed|received") as excinfo:
        download(f"{base}/truncated", dest, timeout=5.0)
    assert f"{base}/truncated" in str(excinfo.value)
    assert list(out.iterdir()) == []


def test_unreachable_server(out: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = out / "nothing.bin"
    start = time.monotonic()
    with pytest.raises(DataError, match="could not reach"):
        download(f"http://127.0.0.1:{port}/x", dest, timeout=2.0)
    assert time.monotonic() - start < 2.0
    assert list(out.iterdir()) == []


def test_keyboard_interrupt_cleans_up_and_propagates(served, out: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = served
    dest = out / "payload.bin"

    real_urlopen = urllib.request.urlopen

    class _Interrupting:
        """Delivers one chunk of the real response, then behaves as if Ctrl-C was pressed."""

        def __init__(self, response) -> None:
            self.response, self.headers, self.calls = response, response.headers, 0

        def __enter__(self) -> _Interrupting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.response.close()

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return self.response.read(n)

    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda *a, **kw: _Interrupting(real_urlopen(*a, **kw)))
    with pytest.raises(KeyboardInterrupt):
        download(f"{base}/payload.bin", dest, chunk_size=1024)
    assert list(out.iterdir()) == []


def test_error_chains_original_exception(served, out: Path) -> None:
    base, _ = served
    with pytest.raises(DataError) as excinfo:
        download(f"{base}/missing", out / "missing.bin")
    assert excinfo.value.__cause__ is not None


def test_file_digest_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 12345)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.md5(data).hexdigest()
    assert file_digest(path, "sha256") == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "sha1") == hashlib.sha1(data).hexdigest()
