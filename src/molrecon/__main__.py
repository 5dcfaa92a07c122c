"""``python -m molrecon`` (used by ``torchrun -m molrecon train ...``)."""

from .cli import main

raise SystemExit(main())
