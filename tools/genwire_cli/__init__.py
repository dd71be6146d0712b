"""The ``genwire`` command: one entry point that dispatches to every tool's subcommands."""
