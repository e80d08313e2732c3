"""The reconcile queue: one reconcile per key at a time, bursts coalesce, requeue-after works."""

from __future__ import annotations

import threading
import time

from interlace_operator.workqueue import WorkQueue


def wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_never_two_reconciles_of_one_key_at_once_and_no_lost_updates() -> None:
    lock = threading.Lock()
    running: dict[str, int] = {}
    overlap: list[str] = []
    calls: list[str] = []

    def handler(key):
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlap.append(key)
            calls.append(key)
        time.sleep(0.02)
        with lock:
            running[key] -= 1
        return None

    q = WorkQueue(handler, workers=4)
    q.start()
    try:
        for _ in range(50):
            q.add("a")
            q.add("b")
            time.sleep(0.001)
        wait_until(q.idle)
        # an add while "a" was being reconciled must cause one more reconcile after it
        n = calls.count("a")
        q.add("a")
        wait_until(lambda: calls.count("a") == n + 1)
    finally:
        q.stop()
    assert not overlap
    assert 2 <= calls.count("a") < 50  # bursts coalesced, none lost


def test_requeue_after_and_error_backoff() -> None:
    times: list[float] = []
    start = time.monotonic()

    def handler(key):
        times.append(time.monotonic() - start)
        if len(times) == 1:
            return 0.2  # requeue-after
        if len(times) == 2:
            raise RuntimeError("boom")
        return None

    errors: list[BaseException] = []

    def on_error(key, err):
        errors.append(err)
        return 0.1

    q = WorkQueue(handler, workers=2, on_error=on_error)
    q.start()
    try:
        q.add("k")
        wait_until(lambda: len(times) == 3)
    finally:
        q.stop()
    assert times[1] - times[0] >= 0.19
    assert times[2] - times[1] >= 0.09
    assert isinstance(errors[0], RuntimeError)


def test_earlier_due_time_wins() -> None:
    seen: list[float] = []
    start = time.monotonic()
    q = WorkQueue(lambda key: seen.append(time.monotonic() - start), workers=1)
    q.start()
    try:
        q.add("k", delay=5)
        q.add("k", delay=0.05)
        wait_until(lambda: seen)
    finally:
        q.stop()
    assert seen[0] < 1 and len(seen) == 1
