"""Collect the records a logger emits inside a ``with`` block (basicsr's logger does not propagate to caplog)."""
import contextlib
import logging


@contextlib.contextmanager
def captured(logger):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
