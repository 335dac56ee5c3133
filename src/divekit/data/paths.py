"""Where datasets live: ``--data-dir`` > ``$DIVEKIT_DATA`` > ``~/.cache/divekit``."""

from __future__ import annotations

import os
from pathlib import Path

from divekit.errors import DataError


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds one sub-folder per dataset (``fashion-mnist/``, ``mnist/``, ...).

    Raises:
        DataError: when the chosen path exists and is not a folder.
    """
    if data_dir is not None:
        root, source = Path(data_dir).expanduser(), "--data-dir"
    elif os.environ.get("DIVEKIT_DATA"):
        root, source = Path(os.environ["DIVEKIT_DATA"]).expanduser(), "DIVEKIT_DATA"
    else:
        root, source = Path.home() / ".cache" / "divekit", "the default data folder"
    if root.exists() and not root.is_dir():
        raise DataError(f"{source} {root} is a file, not a folder; give the folder that holds "
                        "one sub-folder per dataset (or a new folder to download into)")
    return root


def downloads_allowed() -> bool:
    """False when ``DIVEKIT_OFFLINE`` is set to a true value: never touch the network."""
    return os.environ.get("DIVEKIT_OFFLINE", "").lower() not in {"1", "true", "yes"}
