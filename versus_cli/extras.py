"""Which extra a command's missing module comes from: one line that says what to install, not an ImportError.

The base install is the CLI and the clients; each service's model stack is an extra (pyproject.toml), and a
[gateway,ranker] install has no torch. A command that reaches for a module its install lacks names the extra.
"""

from __future__ import annotations

import argparse

#: the extra each command's model stack comes from (``pip install 'versus[EXTRA]'``); serve: the service's own.
COMMAND_EXTRAS = {"demo": "vit,sd35,gateway,ranker", "demo-byo": "triton,gateway,ranker", "export": "vit",
                  "triton": "triton"}
#: third-party modules that come with one extra whatever the command (the ranker's PostgreSQL store).
MODULE_EXTRAS = {"psycopg": "postgres", "pytriton": "triton"}
OURS = ("services", "versus", "versus_cli")


def missing_extra(args: argparse.Namespace, exc: ModuleNotFoundError) -> str | None:
    """The line naming the extra that installs a module this command needs; None if no extra would."""
    module = (exc.name or "").split(".")[0]
    if not module or module in OURS:
        return None  # our own code missing is a broken install, not a missing extra
    if args.command == "serve":
        extra = args.service
    elif args.command == "models":
        extra = "sd35" if getattr(args, "name", "").startswith("sd35") else "vit"
    else:
        extra = COMMAND_EXTRAS.get(args.command, "")
    extra = MODULE_EXTRAS.get(module, extra)
    if not extra:
        return None
    sub = getattr(args, "service", None) or getattr(args, "models_command", None)
    command = " ".join(filter(None, ("versus", args.command, sub)))
    return (f"{command} needs the [{extra}] extra ({module} is not installed): pip install 'versus[{extra}]', "
            f"or the role's hashed lock in locks/ (README: Installing)")
