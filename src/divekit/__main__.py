"""``python -m divekit`` is the ``divekit`` command."""

from divekit.launch import main

raise SystemExit(main())
