"""The installed gptrain's version: printed by ``gptrain --version`` and compared between the ranks of a job."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("gptrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed, version unknown)"
