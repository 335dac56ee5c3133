"""Where datasets live: ``--data-dir`` > ``$DIVEKIT_DATA`` > ``~/.cache/divekit``."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds one sub-folder per dataset (``fashion-mnist/``, ``mnist/``, ...)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("DIVEKIT_DATA"):
        return Path(os.environ["DIVEKIT_DATA"]).expanduser()
    return Path.home() / ".cache" / "divekit"


def downloads_allowed() -> bool:
    """False when ``DIVEKIT_OFFLINE`` is set to a true value: never touch the network."""
    return os.environ.get("DIVEKIT_OFFLINE", "").lower() not in {"1", "true", "yes"}
