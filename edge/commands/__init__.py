"""Subcommands of `edge`: every module here registers its commands with `edge.cli.command`."""
