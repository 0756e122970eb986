"""How many requests the gateway lets through to the backend at once, and how many it lets wait for a turn."""

import math
import time
from collections import Counter

import anyio

# What /health counts since the gateway started, each request once.
OUTCOMES = ("finished", "refused_busy", "timed_out", "disconnected")


class Busy(Exception):
    """Every slot is taken and the queue is full; `retry_after` is a guess in whole seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"busy; retry after {retry_after} s")
        self.retry_after = retry_after


class Slot:
    """One request's turn at the backend; released once, however the request ends."""

    def __init__(self, admission: "Admission"):
        self.admission, self.started, self.released = admission, time.monotonic(), False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._leave(time.monotonic() - self.started)


class Admission:
    """`slots` requests at the backend at once, up to `queue` more waiting in arrival order, the rest refused.

    The backend would queue everything itself, unbounded: under a burst every client then waits on
    every other one and a slow request holds up the lot. Refusing early (429 with Retry-After) keeps
    the wait of an admitted request bounded. `counts` tallies outcomes for /health.
    """

    def __init__(self, slots: int, queue: int):
        self.slots, self.queue = slots, queue
        self.running = self.waiting = 0
        self.counts: Counter = Counter()
        self._mean_s = 1.0  # a request's recent duration, smoothed: the basis of Retry-After
        self._free: anyio.Semaphore | None = None  # made in the event loop, on first use

    async def enter(self) -> Slot:
        """A slot, once one is free (cancel the wait to give up); raises Busy when the queue is full."""
        if self._free is None:
            self._free = anyio.Semaphore(self.slots)
        if self._free.value == 0 and self.waiting >= self.queue:
            self.counts["refused_busy"] += 1
            raise Busy(self.retry_after())
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        return Slot(self)

    def _leave(self, seconds: float) -> None:
        self.running -= 1
        self.counts["finished"] += 1
        self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
        self._free.release()

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved by one slot's worth: the whole queue ahead, shared by the slots."""
        return max(1, min(600, math.ceil(self._mean_s * (self.waiting + 1) / self.slots)))

    def snapshot(self) -> dict:
        return {
            "in_flight": self.running,
            "queued": self.waiting,
            "max_concurrent_requests": self.slots,
            "max_queued_requests": self.queue,
            # every counter, zero included: a client reading /health finds the same fields on a fresh server
            **{outcome: self.counts[outcome] for outcome in OUTCOMES},
            # replies whose tool call the model garbled: returned as content (onestop.deploy.replies)
            "malformed_tool_calls": self.counts["malformed_tool_calls"],
        }
