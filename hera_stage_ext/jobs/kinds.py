"""Job kinds by name: what a job's ``kind`` column means to the one engine.

What a kind is and what it may use of a run is the contract (``contract.JobKind``,
``contract.KindRun``). The engine knows no kind: the composition roots (the server's
``app.py``, the worker process's ``main``, the site service, which is the server in site mode)
fill a ``KindRegistry`` with the kinds they run (``hera_stage_ext.standard_kinds``) and hand
it to the engine: a worker through ``EngineConfig.kinds``, a cancel or a retry as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UnknownKind
from .contract import JobKind


class KindRegistry:
    """The kinds a process runs, by name (``JobKind.name``)."""

    def __init__(self, kinds: Iterable[JobKind] = ()) -> None:
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: JobKind) -> None:
        """Add ``kind`` under its name; a second kind of the same name is a mistake."""
        if kind.name in self._kinds:
            raise ValueError(f"a job kind named {kind.name!r} is registered already")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> JobKind:
        """The kind called ``name``; ``UnknownKind`` when this process runs no such kind."""
        found = self._kinds.get(name)
        if found is None:
            known = ", ".join(sorted(self._kinds)) or "none"
            raise UnknownKind(f"no job kind {name!r} is registered here (known: {known})",
                              kind=name)
        return found

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._kinds))

    def __contains__(self, name: object) -> bool:
        return name in self._kinds
