"""Job kinds by name: what a job's ``kind`` column means to the one engine.

What a kind is and what it may use of a run is the contract (``contract.JobKind``,
``contract.KindRun``). Kinds are found by name in ``KINDS`` (``"module:attribute"``, imported on
first use, so the engine does not import transfer code and a new kind is one line here).
"""

from __future__ import annotations

import importlib

from .contract import JobKind

#: kind name -> "module:attribute" of its JobKind instance.
KINDS: dict[str, str] = {
    "stage": "hera_stage_ext.jobs.stage_kind:STAGE",
    "transfer": "hera_stage_ext.transfer.transfer_kind:TRANSFER",
    "upload": "hera_stage_ext.transfer.upload:UPLOAD",
    "recall": "hera_stage_ext.jobs.recall:RECALL",
}

_loaded: dict[str, JobKind] = {}


def kind(name: str) -> JobKind:
    """The JobKind of ``name``; KeyError for a kind no code handles."""
    found = _loaded.get(name)
    if found is None:
        module, _, attribute = KINDS[name].partition(":")
        found = _loaded[name] = getattr(importlib.import_module(module), attribute)
    return found

