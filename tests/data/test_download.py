"""Tests for divekit.data.download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from divekit.data.download import download, download_limits, file_digest
from divekit.errors import DataError

PAYLOAD = os.urandom(300_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SLEEP_S = 2.0
CLIENT_TIMEOUT_S = 0.5


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    ranges: list[str | None] = []  # the Range header of every request to /ranged, in order

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/ranged":
            _Handler.ranges.append(self.headers.get("Range"))
            self._send_payload()
        elif path == "/trickle":  # ?bytes=N&every=S: N bytes every S seconds
            params = urllib.parse.parse_qs(query)
            self._send_payload(int(params["bytes"][0]), float(params["every"][0]))
        elif path == "/longer-than-declared":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(PAYLOAD[:2000])
            self.close_connection = True
        elif self.path == "/missing":
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

    def _send_payload(self, tick_bytes: int = len(PAYLOAD), tick_s: float = 0.0) -> None:
        """PAYLOAD, or from byte N on with 206 when asked ``Range: bytes=N-``."""
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match[1]) if match else 0
        try:
            self.send_response(206 if match else 200)
            if match:
                last, size = len(PAYLOAD) - 1, len(PAYLOAD)
                self.send_header("Content-Range", f"bytes {start}-{last}/{size}")
            self.send_header("Content-Length", str(len(PAYLOAD) - start))
            self.end_headers()
            for offset in range(start, len(PAYLOAD), tick_bytes):
                self.wfile.write(PAYLOAD[offset : offset + tick_bytes])
                self.wfile.flush()
                time.sleep(tick_s)
        except OSError:  # the client gave up
            pass

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

    _Handler.ranges = []
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
            self.status = response.status

        def __enter__(self) -> _Interrupting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.response.close()

        def read1(self, n: int) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return self.response.read1(n)

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


def test_trickling_server_is_dropped_below_the_minimum_rate(served, out: Path) -> None:
    base, _ = served
    dest = out / "slow.bin"
    start = time.monotonic()
    with pytest.raises(DataError, match=r"too slow: \d+ bytes/s over .* under the 1000 required "
                                        r"\(DIVEKIT_DOWNLOAD_MIN_RATE\)"):
        download(f"{base}/trickle?bytes=10&every=0.05", dest, md5=MD5, timeout=0.3,
                 min_rate=1000, deadline=60)
    assert time.monotonic() - start < 1.5
    # The bytes received so far are kept, under the stable name, for the next attempt.
    assert _leftovers(out) == [".slow.bin.part"]
    partial = (out / ".slow.bin.part").read_bytes()
    assert 0 < len(partial) < 1000 and PAYLOAD.startswith(partial)


def test_total_deadline_ends_a_download_that_keeps_moving(served, out: Path) -> None:
    base, _ = served
    dest = out / "payload.bin"
    start = time.monotonic()
    # 100 kB/s passes any minimum rate but needs 3 s for the payload.
    with pytest.raises(DataError, match=r"longer than the 0.5 s allowed "
                                        r"\(DIVEKIT_DOWNLOAD_TIMEOUT\).* kept in"):
        download(f"{base}/trickle?bytes=2000&every=0.02", dest, md5=MD5, timeout=5.0,
                 deadline=0.5, min_rate=1000)
    assert 0.5 <= time.monotonic() - start < 1.5
    assert not dest.exists()


def test_limits_come_from_arguments_then_environment(served, out: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = served
    monkeypatch.setenv("DIVEKIT_DOWNLOAD_TIMEOUT", "0.4")
    monkeypatch.setenv("DIVEKIT_DOWNLOAD_MIN_RATE", "5")
    assert download_limits() == (0.4, 5.0)
    assert download_limits(deadline=9.0, min_rate=0) == (9.0, 0.0)
    with pytest.raises(DataError, match=r"longer than the 0.4 s allowed"):
        download(f"{base}/trickle?bytes=2000&every=0.02", out / "payload.bin")
    assert list(out.iterdir()) == []  # no checksum: nothing kept to resume
    monkeypatch.setenv("DIVEKIT_DOWNLOAD_MIN_RATE", "lots")
    with pytest.raises(DataError, match="DIVEKIT_DOWNLOAD_MIN_RATE='lots' is invalid"):
        download(f"{base}/payload.bin", out / "payload.bin")
    with pytest.raises(DataError, match="0 is invalid"):
        download(f"{base}/payload.bin", out / "payload.bin", deadline=0)


def test_truncated_download_resumes_with_a_range_request(served, out: Path) -> None:
    # The server announces 300,000 bytes and sends 1,000: keep them, ask for the rest next time.
    base, _ = served
    dest = out / "payload.bin"
    with pytest.raises(DataError, match="closed after 1000 bytes, the server announced 300000"):
        download(f"{base}/truncated", dest, md5=MD5, timeout=5.0)
    assert (out / ".payload.bin.part").read_bytes() == PAYLOAD[:1000]

    assert download(f"{base}/ranged", dest, md5=MD5) == dest
    assert _Handler.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(out) == []


def test_server_without_range_support_starts_over(served, out: Path) -> None:
    base, _ = served  # http.server's file handler ignores Range and answers 200
    (out / ".payload.bin.part").write_bytes(b"x" * 5000)
    download(f"{base}/payload.bin", out / "payload.bin", md5=MD5)
    assert (out / "payload.bin").read_bytes() == PAYLOAD
    assert _leftovers(out) == []


def test_resumed_file_that_fails_its_checksum_is_discarded(served, out: Path) -> None:
    base, _ = served
    (out / ".payload.bin.part").write_bytes(b"x" * 5000)  # not the start of the payload
    with pytest.raises(DataError, match="checksum mismatch"):
        download(f"{base}/ranged", out / "payload.bin", md5=MD5)
    assert list(out.iterdir()) == []
    download(f"{base}/ranged", out / "payload.bin", md5=MD5)
    assert _Handler.ranges == ["bytes=5000-", None]
    assert (out / "payload.bin").read_bytes() == PAYLOAD


def test_body_longer_than_its_content_length_fails_the_checksum(served, out: Path) -> None:
    base, _ = served
    with pytest.raises(DataError, match="checksum mismatch"):
        download(f"{base}/longer-than-declared", out / "x.bin",
                 md5=hashlib.md5(PAYLOAD[:2000]).hexdigest())
    assert list(out.iterdir()) == []


def test_partial_file_of_a_dead_process_is_resumed_and_old_leftovers_removed(
        served, out: Path) -> None:
    base, _ = served
    part = out / ".payload.bin.part"
    # A process that locked the partial file, wrote 777 bytes and was killed.
    writer = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(part)!r}, 'ab'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         f"f.write({PAYLOAD[:777]!r}); f.flush(); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "ready\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    (out / ".payload.bin.k3j_x9q2.part").write_bytes(b"left by the old random naming")
    (out / ".other.bin.part").write_bytes(b"another file's partial download")

    download(f"{base}/ranged", out / "payload.bin", md5=MD5)
    assert _Handler.ranges == ["bytes=777-"]
    assert (out / "payload.bin").read_bytes() == PAYLOAD
    assert _leftovers(out) == [".other.bin.part"]


def test_live_concurrent_download_is_not_clobbered(served, out: Path) -> None:
    base, _ = served
    part = out / ".payload.bin.part"
    with open(part, "ab") as live:
        fcntl.flock(live, fcntl.LOCK_EX)
        live.write(b"live bytes")
        live.flush()
        start = time.monotonic()
        with pytest.raises(DataError, match="another process is downloading .* did not finish"):
            download(f"{base}/ranged", out / "payload.bin", md5=MD5, deadline=0.4)
        assert 0.4 <= time.monotonic() - start < 1.5
        assert part.read_bytes() == b"live bytes"
    assert _Handler.ranges == [] and not (out / "payload.bin").exists()


def test_second_download_waits_for_the_first_and_uses_its_file(served, out: Path) -> None:
    base, _ = served
    part, dest = out / ".payload.bin.part", out / "payload.bin"
    live = open(part, "ab")  # noqa: SIM115 - the other process's file, closed by finish()
    fcntl.flock(live, fcntl.LOCK_EX)

    def finish() -> None:  # the other process completes after 0.3 s and lets go
        time.sleep(0.3)
        live.write(PAYLOAD)
        live.flush()
        os.replace(part, dest)
        live.close()

    finisher = threading.Thread(target=finish)
    finisher.start()
    try:
        assert download(f"{base}/ranged", dest, md5=MD5, deadline=10) == dest
    finally:
        finisher.join()
    assert _Handler.ranges == []  # nothing fetched twice
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(out) == []
