"""``python -m llmspec``: the same command line as the ``llmspec`` script."""

from llmspec.cli import main

main()
