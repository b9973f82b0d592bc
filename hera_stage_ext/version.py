"""The package's version, as installed (its own module: the package's ``__init__`` and the
server extension both read it, and ``__init__`` loads the extension)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hera_stage_ext")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"
