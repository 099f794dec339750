"""Subcommands of the ``pai`` CLI (see ``pai_core.cli``)."""
