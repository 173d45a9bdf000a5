"""Package discovery: every package under llmspec/ is found, not listed; the top-level backends/ and specs/ folders
install as llmspec.backends and llmspec.specs (the rest of the metadata is in pyproject.toml)."""

from setuptools import find_packages, setup

RENAMED = {"llmspec.backends": "backends", "llmspec.specs": "specs"}

setup(
    packages=[*find_packages(include=["llmspec", "llmspec.*"]), *RENAMED],
    package_dir=RENAMED,
)
