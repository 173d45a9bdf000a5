"""Execution backends (installed as ``llmspec.backends``).

A backend turns a compiled spec (``llmspec build`` output) into a training run. The single-process ``torch``
backend and the ``deepspeed`` backend arrive with ``llmspec run``; nothing here is imported on the plan path.
"""
