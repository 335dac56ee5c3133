"""Downloading dataset files: streamed, timeout, checksum verified afterwards, atomic rename.

The body goes into a temporary file next to ``dest`` (same filesystem, so the final
``os.replace`` is atomic); ``dest`` appears only once the whole file is present and verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from divekit.data.paths import downloads_allowed
from divekit.errors import DataError

__all__ = ["download", "fetch_missing", "file_digest", "verify_digest"]

_USER_AGENT = "divekit"


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


def download(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
             timeout: float = 30.0, chunk_size: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``timeout`` (seconds) applies to connecting and to each read. When ``md5`` or ``sha256``
    is given, the file is checked before it is moved into place. On any failure nothing is
    left behind and an existing ``dest`` is untouched; the error is a :class:`DataError`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}
    hashes = {name: hashlib.new(name) for name in expected}
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    except ValueError as e:
        raise DataError(f"cannot download {url!r}: {e}") from e
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix="." + dest.name + ".", suffix=".part")
    tmp_path = Path(tmp_name)
    received = 0
    try:
        try:
            with (
                os.fdopen(fd, "wb") as tmp,
                urllib.request.urlopen(request, timeout=timeout) as response,
            ):
                declared = response.headers.get("Content-Length")
                while chunk := response.read(chunk_size):
                    tmp.write(chunk)
                    received += len(chunk)
                    for h in hashes.values():
                        h.update(chunk)
        except urllib.error.HTTPError as e:
            raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise DataError(f"download of {url} timed out after {timeout} s") from e
            raise DataError(f"could not reach {url}: {e.reason}") from e
        except TimeoutError as e:
            raise DataError(f"download of {url} timed out after {timeout} s") from e
        except http.client.IncompleteRead as e:
            raise DataError(f"download of {url} failed: the connection closed after "
                            f"{received + len(e.partial)} bytes, {e.expected} short") from e
        except (OSError, http.client.HTTPException) as e:
            raise DataError(f"download of {url} failed: {e}") from e
        # A server that closes early without urllib noticing would otherwise pass unchecked.
        if declared is not None and declared.isdigit() and received != int(declared):
            raise DataError(f"download of {url} failed: received {received} bytes, "
                            f"the server announced {declared}")
        for name, value in expected.items():
            got = hashes[name].hexdigest()
            if got != value:
                raise DataError(f"checksum mismatch for {url}: expected {name} {value}, "
                                f"got {got}; the file was discarded")
        # mkstemp makes the file private; a dataset file should be as readable as any other.
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return dest
