"""``python -m bridge`` is the ``bridge`` command."""

from ._cli import main

raise SystemExit(main())
