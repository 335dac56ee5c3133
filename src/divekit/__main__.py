"""``python -m divekit`` is the ``divekit`` command."""

from divekit.cli import main

raise SystemExit(main())
