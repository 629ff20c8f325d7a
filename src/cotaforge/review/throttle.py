"""A sliding-window counter of attempts per key, for throttling sign-in (in memory, per server process)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable


class Throttle:
    """At most `limit` attempts per key in any `window_s` seconds.

    `retry_after(key)` is how long to wait before the next attempt counts (0 when one may be made now);
    `hit(key)` counts one; `clear(key)` forgets a key (a successful sign-in clears its address, so the
    real token holder is never held back by their own typos for long).
    """

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a throttle needs limit >= 1 and window_s > 0")
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            return deque()
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if not hits:
            del self._hits[key]
        return hits

    def retry_after(self, key: str) -> int:
        """Whole seconds until `key` may try again; 0 when it may now."""
        with self._lock:
            now = self._clock()
            hits = self._recent(key, now)
            if len(hits) < self.limit:
                return 0
            return max(1, math.ceil(hits[0] + self.window_s - now))

    def hit(self, key: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent(key, now)
            self._hits.setdefault(key, deque()).append(now)
            if len(self._hits) > 100_000:  # a flood of distinct keys must not grow memory without bound
                for stale in [k for k, v in self._hits.items() if v[-1] <= now - self.window_s]:
                    del self._hits[stale]

    def clear(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)
