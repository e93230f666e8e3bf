"""Log records carry the instance, the background loop and the bidder, as text or as JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest

from pacer import logs


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """dictConfig changes process-wide loggers: put them back, so caplog elsewhere still sees pacer's records."""
    names = ("pacer", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level) for n in names
    }
    yield
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)
    logs.set_instance("")


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    config = logs.log_config(fmt, "info")
    stream = io.StringIO()
    config["handlers"]["default"]["stream"] = stream
    logging.config.dictConfig(config)
    return logging.getLogger("pacer"), stream


async def test_json_lines_name_the_instance_the_loop_and_the_bidder() -> None:
    log, stream = _capture("json")
    logs.set_instance("host:1:abcd")

    async def in_a_loop() -> None:
        logs.current_loop.set("sync")
        log.warning("bidder %s: lost", "b-7", extra={"bidder": "b-7"})

    await asyncio.create_task(in_a_loop())  # a task's context: the loop name stays there
    log.info("started")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "bidder b-7: lost" and first["level"] == "warning"
    assert (first["instance"], first["loop"], first["bidder"]) == ("host:1:abcd", "sync", "b-7")
    assert "loop" not in second and "bidder" not in second, "nothing made up where there is none"
    assert first["ts"].endswith("Z")


def test_text_lines_stay_readable() -> None:
    log, stream = _capture("text")
    log.warning("bidder %s: lost", "b-7", extra={"bidder": "b-7"})
    assert "WARNING pacer bidder=b-7: bidder b-7: lost" in stream.getvalue()


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="PACER_LOG_FORMAT"):
        logs.log_config("xml", "info")
