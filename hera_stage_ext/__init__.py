"""hera_stage_ext: a HERA-Librarian-style archive inside Jupyter.

Entry points for Jupyter: the server extension (``StagingApp``) and the prebuilt lab extension.
"""

from __future__ import annotations

from typing import Any

from .version import __version__ as __version__


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "hera_stage_ext"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import StagingApp

    return [{"module": "hera_stage_ext", "app": StagingApp}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext hera_stage_ext``: the ``%stage`` / ``%%stage`` magics. IPython is imported
    only here, so the server process never imports it."""
    from .magics import load_ipython_extension as load

    load(ipython)
