"""Ctrl-C and a scheduler's SIGTERM during training: the run stops between steps and saves ``last.pth``
(DESIGN §7) instead of dying mid-step, in the main process and its DataLoader workers alike."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between steps; a second Ctrl-C stops at once.

    A signal that arrives when no step is left (final evaluation, reports) is delivered again on exit,
    so the program around the run (``megastarid demo``) stops too instead of silently carrying on.
    """

    def __init__(self) -> None:
        self.requested = False
        self.handled = False
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: keep the default behaviour
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested, self._signum = True, signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        log.warning("%s received: stopping after this step and saving last.pth", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._signum is not None and not self.handled and exc[0] is None:
            signal.raise_signal(self._signum)


#: the signals a job scheduler or Ctrl-C sends the whole process group
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def leave_signals_to_main(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: a job scheduler or Ctrl-C signals the whole process group,
    and a worker dying of it would crash the main process before it can save ``last.pth``. The workers are
    started with these signals blocked (``workers_started_deaf``), so one that arrives before this runs stays
    pending and is then dropped as ignored."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def workers_started_deaf() -> Iterator[None]:
    """Block SIGINT/SIGTERM while DataLoader workers are started: a worker inherits the mask, so a signal to
    the process group in the moment between its start and ``leave_signals_to_main`` cannot kill it. The main
    process gets a signal that came meanwhile as soon as the mask is lifted."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
