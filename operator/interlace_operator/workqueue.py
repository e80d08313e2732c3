"""A small coalescing work queue with delays, in the manner of client-go's workqueue.

Why: kopf delivers watch events for PruneJobs AND for RayJobs, and a single PruneJob can get a burst
of them (its own status patches, KubeRay's updates, the job's progress reports). The handlers only
enqueue the PruneJob's key; the queue guarantees

* one reconcile per key at a time (a key added while it is being reconciled runs again afterwards),
* bursts coalesce (a key already waiting is not queued twice; the earlier due time wins),
* `add(key, delay)` for requeue-after (retry backoff, deadlines) and error backoff per key,

with a fixed pool of threads because the kubernetes client is synchronous.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(
        self,
        handler: Callable[[Hashable], float | None],
        *,
        workers: int = 4,
        on_error: Callable[[Hashable, BaseException], float] | None = None,
        name: str = "reconcile",
    ) -> None:
        self._handler = handler
        self._on_error = on_error
        self._workers = workers
        self._name = name
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}  # key -> due time of its live heap entry
        self._active: set[Hashable] = set()
        self._again: dict[Hashable, float] = {}  # keys added while active -> due time
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.processed = 0

    # ------------------------------------------------------------------ public

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        due = time.monotonic() + max(0.0, delay)
        with self._cv:
            if key in self._active:
                self._again[key] = min(due, self._again.get(key, due))
                return
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cv.notify()

    def forget(self, key: Hashable) -> None:
        with self._cv:
            self._due.pop(key, None)
            self._again.pop(key, None)

    def start(self) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)

    def __len__(self) -> int:
        with self._cv:
            return len(self._due)

    def idle(self) -> bool:
        with self._cv:
            return not self._due and not self._active and not self._again

    # ------------------------------------------------------------------ workers

    def _take(self) -> Hashable | None:
        with self._cv:
            while not self._stopping:
                now = time.monotonic()
                while self._heap:
                    due, _, key = self._heap[0]
                    if self._due.get(key) != due:  # stale entry (re-added earlier, or forgotten)
                        heapq.heappop(self._heap)
                        continue
                    if due > now:
                        break
                    heapq.heappop(self._heap)
                    del self._due[key]
                    self._active.add(key)
                    return key
                timeout = (self._heap[0][0] - now) if self._heap else None
                self._cv.wait(timeout)
            return None

    def _done(self, key: Hashable, requeue: float | None) -> None:
        with self._cv:
            self._active.discard(key)
            again = self._again.pop(key, None)
        if again is not None:
            self.add(key, max(0.0, again - time.monotonic()))
        if requeue is not None:
            self.add(key, requeue)

    def _run(self) -> None:
        while True:
            key = self._take()
            if key is None:
                return
            requeue: float | None = None
            try:
                requeue = self._handler(key)
            except BaseException as err:  # a worker must survive anything a reconcile raises
                requeue = self._on_error(key, err) if self._on_error else 5.0
            finally:
                self.processed += 1
                self._done(key, requeue)
