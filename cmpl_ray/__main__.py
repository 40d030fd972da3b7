"""``python -m cmpl_ray`` = the ``cmpl-ray`` command."""

from .cli import main

raise SystemExit(main())
