"""Leader election (interlace_operator.leader) against the real API server's Lease API: one leader at
a time, hand-over on release and on death, a leader that cannot renew steps down, and the config checks.
Short timings (lease 3 s) keep it quick; the chart's defaults are client-go's (15/10/2 s)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from interlace_operator.leader import LeaderElector, LeaseConfig

from tests.operator.conftest import wait_for


class Candidate:
    def __init__(self, cp: Any, namespace: str, identity: str, **timing: float) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        cfg = LeaseConfig(namespace=namespace, name="interlace-operator", identity=identity,
                          **({"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.2} | timing))
        self.elector = LeaderElector(cp.python_client(), cfg, on_started_leading=self.started.set,
                                     on_stopped_leading=self.stopped.set)

    def start(self) -> Candidate:
        self.elector.start()
        return self

    def die(self) -> None:
        """Stop renewing without releasing: what a SIGKILL-ed pod leaves behind."""
        self.elector._stop.set()
        assert self.elector._thread is not None
        self.elector._thread.join(5)


def holder(cp: Any, namespace: str) -> dict[str, Any]:
    return cp.kubectl_json("get", "lease", "interlace-operator", "-n", namespace)["spec"]


@pytest.mark.cluster
def test_one_leader_then_release_then_death(control_plane: Any, namespace: str) -> None:
    cp = control_plane
    a, b = Candidate(cp, namespace, "a").start(), Candidate(cp, namespace, "b").start()
    wait_for(lambda: a.started.is_set() or b.started.is_set(), timeout=20, what="a leader")
    time.sleep(1.5)  # several retry periods: the other one must stay a standby
    leaders = [c for c in (a, b) if c.elector.is_leader]
    assert len(leaders) == 1, [c.elector.identity for c in leaders]
    first = leaders[0]
    second = b if first is a else a
    spec = holder(cp, namespace)
    assert spec["holderIdentity"] == first.elector.identity and spec["leaseDurationSeconds"] == 3

    # a clean shutdown hands the Lease over at once (well inside the 3 s lease duration)
    released = time.monotonic()
    first.elector.release()
    wait_for(second.started.is_set, timeout=3, interval=0.05, what="the standby to take over")
    assert time.monotonic() - released < 2.5
    assert holder(cp, namespace)["holderIdentity"] == second.elector.identity
    assert not first.stopped.is_set()  # released, not lost

    # a third candidate; the leader dies without releasing: taken over only after the lease expired
    c = Candidate(cp, namespace, "c").start()
    time.sleep(1.0)
    assert not c.started.is_set()
    died = time.monotonic()
    second.die()
    wait_for(c.started.is_set, timeout=10, interval=0.05, what="a takeover after the lease expired")
    waited = time.monotonic() - died
    assert 2.0 <= waited <= 6.0, waited  # lease duration (3 s) measured from the last renewal seen
    spec = holder(cp, namespace)
    assert spec["holderIdentity"] == "c" and spec["leaseTransitions"] >= 2
    c.elector.release()


@pytest.mark.cluster
def test_a_leader_that_cannot_renew_steps_down(control_plane: Any, namespace: str) -> None:
    """Someone else overwrites the Lease (a split brain in the making): the leader's renewals fail and
    it stops leading once the renew deadline passed, i.e. before its lease could expire for others."""
    cp = control_plane
    a = Candidate(cp, namespace, "a").start()
    wait_for(a.started.is_set, timeout=20, what="a to lead")
    stolen = time.monotonic()
    cp.kubectl("patch", "lease", "interlace-operator", "-n", namespace, "--type=merge", "-p",
               '{"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60}}')
    wait_for(a.stopped.is_set, timeout=10, interval=0.05, what="the leader to step down")
    assert not a.elector.is_leader
    assert 1.5 <= time.monotonic() - stolen <= 5.0
    a.elector.release()  # not the holder any more: leaves the intruder's record alone
    assert holder(cp, namespace)["holderIdentity"] == "intruder"


def test_lease_config_is_checked() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        LeaseConfig(namespace="x", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="retry period"):
        LeaseConfig(namespace="x", lease_duration=10, renew_deadline=5, retry_period=5)


def test_leader_election_env() -> None:
    from interlace_operator.config import OperatorConfig

    cfg = OperatorConfig.from_env({"INTERLACE_LEADER_ELECTION": "true", "POD_NAMESPACE": "ops",
                                   "INTERLACE_LEASE_DURATION_SECONDS": "4"})
    assert cfg.leader_election and cfg.lease_namespace == "ops" and cfg.lease_name == "interlace-operator"
    assert cfg.lease_duration_seconds == 4 and cfg.lease_renew_deadline_seconds == 10
    assert not OperatorConfig.from_env({}).leader_election
    with pytest.raises(ValueError, match="boolean"):
        OperatorConfig.from_env({"INTERLACE_LEADER_ELECTION": "maybe"})
