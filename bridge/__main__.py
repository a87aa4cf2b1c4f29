"""``python -m bridge`` is the ``bridge`` command."""

from .daemon._cli import main

raise SystemExit(main())
