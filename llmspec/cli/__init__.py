"""The ``llmspec`` command line: a thin shell over the Python API (the verb table is ``llmspec.cli.app``)."""

from llmspec.cli.app import app, main

__all__ = ["app", "main"]
