"""``app.drop_unwritten_debug``: the server's log writes exactly what it wrote before, and a
debug record nobody would write (each 2xx reply's access line) is no longer made."""

from __future__ import annotations

import io
import logging
import uuid

from hera_stage_ext.app import drop_unwritten_debug


def _logger(handler_level: int, propagate: bool = False) -> tuple[logging.Logger, io.StringIO]:
    # As traitlets sets up Jupyter's application logger: DEBUG, its handler at the log level.
    log = logging.getLogger(f"test-app-{uuid.uuid4().hex}")
    log.setLevel(logging.DEBUG)
    log.propagate = propagate
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setLevel(handler_level)
    log.addHandler(handler)
    return log, out


def _write_all(log: logging.Logger) -> None:
    log.debug("200 POST /search")
    log.info("started")
    log.warning("404 GET /nope")
    logging.getLogger(f"{log.name}.part").debug("part's debug")
    logging.getLogger(f"{log.name}.part").info("part's info")


def test_debug_nobody_writes_is_dropped_and_the_rest_written_as_before():
    log, out = _logger(logging.INFO)
    drop_unwritten_debug(log)
    assert not log.isEnabledFor(logging.DEBUG)
    _write_all(log)
    assert out.getvalue() == "started\n404 GET /nope\npart's info\n"


def test_a_debug_handler_still_gets_its_debug():
    log, out = _logger(logging.DEBUG)
    drop_unwritten_debug(log)
    _write_all(log)
    assert out.getvalue().splitlines() == ["200 POST /search", "started", "404 GET /nope",
                                           "part's debug", "part's info"]


def test_a_logger_below_with_its_own_handler_still_gets_its_debug():
    log, out = _logger(logging.INFO)
    below = io.StringIO()
    logging.getLogger(f"{log.name}.part").addHandler(logging.StreamHandler(below))
    drop_unwritten_debug(log)
    _write_all(log)
    assert below.getvalue() == "part's debug\npart's info\n"
    assert out.getvalue() == "started\n404 GET /nope\npart's info\n"


def test_a_logger_that_propagates_is_left_as_it_is():
    log, _ = _logger(logging.INFO, propagate=True)
    drop_unwritten_debug(log)
    assert log.level == logging.DEBUG
