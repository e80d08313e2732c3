"""free_port: ports a component binds later must not be ones outgoing connections can take meanwhile."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from tests.cluster import testbed
from tests.cluster.testbed import _ephemeral_range, free_port


def test_ports_are_bindable_distinct_and_outside_the_ephemeral_range() -> None:
    lo, hi = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(not lo <= p <= hi for p in ports), (lo, hi, [p for p in ports if lo <= p <= hi])
    assert all(p >= 20000 for p in ports)  # clear of Ray's worker ports (10002-19999)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    lo, _ = _ephemeral_range()
    with socket.socket() as listener:
        for taken in range(lo - 1, 20000, -1):  # a listener this test opens itself, not via free_port
            try:
                listener.bind(("127.0.0.1", taken))
                break
            except OSError:
                continue
        listener.listen()
        draws = iter([taken, taken, taken, *range(taken - 1, 20000, -1)])
        monkeypatch.setattr(testbed, "_rng", SimpleNamespace(choice=lambda _: next(draws)))
        monkeypatch.setattr(testbed, "_handed_out", set())
        assert free_port() < taken  # the three draws of the busy port were skipped
