"""``python -m versus_cli`` is the ``versus`` command."""

from versus_cli.cli import main

raise SystemExit(main())
