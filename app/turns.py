"""Heavy browser work taken in turns: the Gradio event settings of the handlers that can take seconds, and
:class:`Turns`, one such job per browser session at a time."""
from __future__ import annotations

import threading


class TurnRefused(ValueError):
    """A session's heavy request sent while its last one still runs; the message says so."""


# Event settings for the handlers that can take seconds (a map region, training a reward or a concept): their
# own pool of workers, so every other view (pages, the Review queue, labels) keeps its workers whatever the
# heavy handlers are asked. The pool is wide on purpose: Turns below refuses a session's extra requests as they
# come up, which only helps if they come up at once instead of waiting in line behind each other.
HEAVY = {"concurrency_limit": 16, "concurrency_id": "heavy"}


class Turns:
    """Heavy work taken in turns. Each browser session runs one heavy job at a time: a request sent while that
    session's last one still runs or waits is refused in one line. At most ``slots`` jobs compute at once, and
    as each session has at most one of them waiting, a second curator waits for one job, not for the hundreds a
    first one (a script, a stuck page) sent before."""

    def __init__(self, slots: int = 2):
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._slots = threading.Semaphore(slots)

    def run(self, who: str, what: str, fn, *args):
        with self._lock:
            if who in self._busy:
                raise TurnRefused(f"your last {what} is still being worked out; this one was not started "
                                  "(send it again once that shows)")
            self._busy.add(who)
        try:
            with self._slots:
                return fn(*args)
        finally:
            with self._lock:
                self._busy.discard(who)
