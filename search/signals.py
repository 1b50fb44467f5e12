"""Ctrl-C and SIGTERM end a run cleanly: the running trial is closed and queued again, nothing stays RUNNING.

The handler raises KeyboardInterrupt at once, as Python's own does, so Optuna marks the running trial
failed and the command exits 130 (SIGINT) or 143 (SIGTERM). It also remembers the signal: an exception
raised while Python runs a finalizer (a weakref callback during garbage collection, frequent inside
Keras) is swallowed with a message only, so the objective's Keras callback raises it again at the next
epoch end (search.study.objective.StopOnSignal).
"""

from __future__ import annotations

import logging
import signal

requested: str | None = None  # the name of the signal received, once one was


def _handler(signum, frame):
    global requested
    requested = signal.Signals(signum).name
    raise KeyboardInterrupt(requested)


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    """Optuna logs an interrupted trial as failed, with the whole stack, then its value: two warnings the CLI
    replaces with one line."""
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
        return False
    return not (requested and record.getMessage().startswith("Trial "))


def install() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)
    logging.getLogger("optuna.study._optimize").addFilter(_not_an_interrupt)


def exit_code() -> int:
    return 143 if requested == "SIGTERM" else 130
