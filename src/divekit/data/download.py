"""Downloading dataset files: streamed, bounded in time, resumable, checksum verified, atomic.

The body goes into ``.NAME.part`` next to ``dest`` (same filesystem, so the final
``os.replace`` is atomic); ``dest`` appears only once the whole file is present and verified.

Bounds: ``timeout`` seconds for connecting and for each read; ``deadline`` seconds for the
whole download (``DIVEKIT_DOWNLOAD_TIMEOUT``, default one hour); at least ``min_rate`` bytes
per second over every ``timeout`` seconds (``DIVEKIT_DOWNLOAD_MIN_RATE``, default 1024), so a
server that trickles is dropped as surely as one that stalls.

Resuming: when a checksum is given, a download that fails in transfer (timeout, too slow,
connection closed early, Ctrl-C) keeps its ``.part`` file, and the next call asks the server
for the rest (``Range: bytes=N-``). A server that answers ``206`` continues the file; any other
answer starts it over; the checksum of the whole file decides in every case. Without a
checksum nothing partial is kept, since a spliced file could not be checked.

Concurrency: the process writing ``.NAME.part`` holds an exclusive ``fcntl.flock`` on it. A
second download of the same file waits (within its deadline) and then uses the first one's
verified result instead of clobbering its partial file; the kernel drops the lock of a process
that dies, so its ``.part`` is simply resumed. POSIX only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from divekit.data.paths import downloads_allowed
from divekit.errors import DataError

__all__ = ["download", "download_limits", "fetch_missing", "file_digest", "verify_digest"]

_USER_AGENT = "divekit"
DEFAULT_DEADLINE_S = 3600.0
DEFAULT_MIN_RATE = 1024.0  # bytes per second
_LOCK_POLL_S = 0.1


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Return the hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_digest(path: Path, expected: str, algorithm: str = "md5") -> None:
    """Raise :class:`DataError` unless the file's digest is the published ``expected``."""
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(f"{path} has {algorithm} {actual}, expected {expected}: the file is "
                        "corrupt or not the original; delete it and fetch it again")


def fetch_missing(url: str, dest: Path, md5: str) -> str:
    """Download ``url`` to ``dest`` if the file is missing and downloads are allowed.

    Returns:
        ``""`` when ``dest`` is there, else why it is not, as a sentence to end the caller's
        "file missing" message with (downloads are off, or the download's error).
    """
    if dest.is_file():
        return ""
    if not downloads_allowed():
        return " Downloads are off (DIVEKIT_OFFLINE is set)."
    try:
        download(url, dest, md5=md5, timeout=20)
    except DataError as e:
        return f" Downloading it failed: {e}"
    return ""


def download_limits(deadline: float | None = None,
                    min_rate: float | None = None) -> tuple[float, float]:
    """``(deadline seconds, minimum bytes per second)``: the arguments, else the environment
    (``DIVEKIT_DOWNLOAD_TIMEOUT``, ``DIVEKIT_DOWNLOAD_MIN_RATE``), else the defaults."""
    limits = []
    for value, variable, default, lowest in (
        (deadline, "DIVEKIT_DOWNLOAD_TIMEOUT", DEFAULT_DEADLINE_S, "positive"),
        (min_rate, "DIVEKIT_DOWNLOAD_MIN_RATE", DEFAULT_MIN_RATE, "zero or positive"),
    ):
        if value is None:
            text = os.environ.get(variable, "").strip()
            try:
                value = float(text) if text else default
            except ValueError:
                value = float("nan")
            source = f"{variable}={text!r}"
        else:
            source = f"{value!r}"
        if not (value > 0 or (value == 0 and lowest != "positive")):
            raise DataError(f"download limit {source} is invalid: give a {lowest} number "
                            "of seconds (timeout) or bytes per second (minimum rate)")
        limits.append(float(value))
    return limits[0], limits[1]


class _Transfer(DataError):
    """A failure of the transfer itself, after which the bytes received so far are sound."""


def download(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
             timeout: float = 30.0, chunk_size: int = 1 << 20, deadline: float | None = None,
             min_rate: float | None = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Args:
        url: what to fetch (http or https).
        dest: where the verified file ends up; an existing file is replaced only on success.
        md5, sha256: published checksums; the file is checked before it is moved into place,
            and a partial file is kept for resuming only when one is given.
        timeout: seconds allowed for connecting and for each read; also the window over which
            ``min_rate`` is measured.
        chunk_size: most bytes taken from the connection at once.
        deadline: seconds for the whole download (default ``DIVEKIT_DOWNLOAD_TIMEOUT``).
        min_rate: bytes per second below which the download is abandoned; 0 turns the check
            off (default ``DIVEKIT_DOWNLOAD_MIN_RATE``).

    Returns:
        ``dest``. Every failure is a :class:`DataError` and leaves an existing ``dest`` as it was.
    """
    deadline, min_rate = download_limits(deadline, min_rate)
    started = time.monotonic()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}
    part = dest.with_name(f".{dest.name}.part")
    _remove_old_leftovers(dest)
    part_file, waited = _lock_partial(part, url, started + deadline)
    with part_file:
        if waited and expected and dest.is_file() and _digests(dest, expected) == expected:
            part.unlink()  # another process fetched it while we waited; this one is empty
            return dest
        try:
            if not expected:  # nothing could check a spliced file: never resume
                part_file.truncate(0)
            _fetch(url, part_file, timeout, chunk_size, started, deadline, min_rate)
            actual = _digests(part, expected)
            for name, value in expected.items():
                if actual[name] != value:
                    raise DataError(f"checksum mismatch for {url}: expected {name} {value}, "
                                    f"got {actual[name]}; the file was discarded")
            os.replace(part, dest)
        except _Transfer as e:
            kept = part.stat().st_size if expected else 0
            if not kept:
                part.unlink(missing_ok=True)
                raise
            raise DataError(f"{e}; the {kept} bytes received are kept in {part} and the next "
                            "download resumes there") from e.__cause__
        except KeyboardInterrupt:
            if not (expected and part.stat().st_size):
                part.unlink(missing_ok=True)
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return dest


def _remove_old_leftovers(dest: Path) -> None:
    """Delete ``.NAME.XXXXXXXX.part`` files left by versions that named partials at random."""
    for stale in dest.parent.glob(f".{dest.name}.{'?' * 8}.part"):
        stale.unlink(missing_ok=True)


def _lock_partial(part: Path, url: str, give_up_at: float) -> tuple[BinaryIO, bool]:
    """Open ``part`` (created if missing, contents kept) with an exclusive lock on it.

    Returns:
        The open file and whether another process held it first (and may have finished).
    """
    waited = False
    while True:
        f = open(part, "a+b")  # noqa: SIM115 - returned open, closed by the caller
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            if time.monotonic() >= give_up_at:
                raise DataError(f"another process is downloading {url} into {part} and did "
                                "not finish in time; wait for it, or raise "
                                "DIVEKIT_DOWNLOAD_TIMEOUT") from None
            waited = True
            time.sleep(_LOCK_POLL_S)
            continue
        # The holder may have renamed its file into place meanwhile: lock the new one instead.
        try:
            if os.path.samestat(os.fstat(f.fileno()), os.stat(part)):
                return f, waited
        except FileNotFoundError:
            pass
        f.close()


def _digests(path: Path, expected: dict[str, str]) -> dict[str, str]:
    return {name: file_digest(path, name) for name in expected}


def _fetch(url: str, part_file: BinaryIO, timeout: float, chunk_size: int, started: float,
           deadline: float, min_rate: float) -> None:
    """Append the rest of ``url`` to ``part_file``, or write it from the start when the server
    cannot resume (or ``part_file`` is empty)."""
    have = part_file.seek(0, os.SEEK_END)
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as e:
        raise DataError(f"cannot download {url!r}: {e}") from e
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_range = response.headers.get("Content-Range") or ""
            if not (response.status == 206 and content_range.startswith(f"bytes {have}-")):
                part_file.truncate(0)  # no usable resume: start over
            declared = response.headers.get("Content-Length")
            window_start, window_bytes = time.monotonic(), 0
            while chunk := response.read1(chunk_size):
                part_file.write(chunk)
                received += len(chunk)
                now = time.monotonic()
                if now - started > deadline:
                    raise _Transfer(f"download of {url} took longer than the {deadline:g} s "
                                    "allowed (DIVEKIT_DOWNLOAD_TIMEOUT)")
                if now - window_start >= timeout:
                    rate = (received - window_bytes) / (now - window_start)
                    if rate < min_rate:
                        raise _Transfer(f"download of {url} is too slow: {rate:.0f} bytes/s "
                                        f"over {now - window_start:.1f} s, under the "
                                        f"{min_rate:g} required (DIVEKIT_DOWNLOAD_MIN_RATE)")
                    window_start, window_bytes = now, received
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after byte ``have``: the partial file is suspect
            part_file.truncate(0)
            return _fetch(url, part_file, timeout, chunk_size, started, deadline, min_rate)
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise _Transfer(f"download of {url} timed out after {timeout} s") from e
        raise DataError(f"could not reach {url}: {e.reason}") from e
    except TimeoutError as e:
        raise _Transfer(f"download of {url} timed out after {timeout} s") from e
    except (OSError, http.client.HTTPException) as e:
        raise _Transfer(f"download of {url} failed after {received} bytes: {e}") from e
    finally:
        part_file.flush()
    # A server that closes early (or announces more than it sends) ends the body quietly.
    if declared is not None and declared.isdigit() and received != int(declared):
        raise _Transfer(f"download of {url} failed: the connection closed after {received} "
                        f"bytes, the server announced {declared}")
