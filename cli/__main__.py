"""``python -m cli``: the same as the ``nicheloop`` command (the launcher starts the monitor this way)."""

from cli.main import app

app()
