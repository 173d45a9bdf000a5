"""Package discovery: every package under llmspec/ is found, not listed; the top-level backends/ and specs/ folders
install as llmspec.backends and llmspec.specs (the rest of the metadata is in pyproject.toml)."""

from setuptools import find_namespace_packages, setup

RENAMED = {"llmspec.backends": "backends", "llmspec.specs": "specs"}

setup(
    # namespace discovery: data folders such as llmspec/compile/templates ship as the packages Python sees them as
    packages=[*find_namespace_packages(include=["llmspec", "llmspec.*"], exclude=["*.__pycache__"]), *RENAMED],
    package_dir=RENAMED,
)
