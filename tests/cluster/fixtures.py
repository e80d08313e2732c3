"""pytest plugin: one real control plane per session, a fresh namespace per test.

Loaded from tests/conftest.py (`pytest_plugins = ["tests.cluster.fixtures"]`). The cluster starts
lazily, the first time a test asks for `control_plane` (directly or through `kube_admin`/`namespace`),
so test runs that select no cluster test (`-m "not cluster"`) never start it.

Environment:
  INTERLACE_TESTBED_DIR     where hack/testbed/build.sh put the binaries (default $INTERLACE_CACHE/testbed, ~/.cache/interlace/testbed)
  INTERLACE_TESTBED_KEEP=1  keep the control plane's temp dir (logs, kubeconfigs) even when all passed
  INTERLACE_TESTBED_EXTRA_ARGS='{"kube-apiserver": ["--feature-gates=..."]}'  extra flags per component
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.node import RealNode, host_ip, host_leftovers
from tests.cluster.testbed import Binaries, ControlPlane, Kueue, TestbedError, read_versions

_STATE: dict[str, object] = {}


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, controller-manager, scheduler, kwok (1 fake 8-GPU node), KubeRay."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def log(msg: str) -> None:
        """Start-up steps and timings on the terminal with -v (not swallowed by output capture)."""
        if reporter is None or request.config.getoption("verbose") <= 0:
            return
        ctx = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        with ctx:
            reporter.write_line(f"[testbed] {msg}")

    try:
        cp = ControlPlane(
            log=log, extra_args=json.loads(os.environ.get("INTERLACE_TESTBED_EXTRA_ARGS") or "{}")
        )
    except TestbedError as e:
        missing = str(e)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)
    _STATE["control_plane"] = cp
    failures_before = request.session.testsfailed
    try:
        try:
            cp.start()
        except Exception as e:
            pytest.fail(f"control plane failed to start: {e}\n{cp.logs_report()}", pytrace=False)
        yield cp
    finally:
        _STATE.pop("control_plane", None)
        cp.stop()
        failed = request.session.testsfailed > failures_before
        if failed or os.environ.get("INTERLACE_TESTBED_KEEP"):
            if reporter is not None:
                reporter.write_line(f"[testbed] logs and kubeconfigs kept in {cp.workdir}")
        else:
            shutil.rmtree(cp.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def real_cluster(request: pytest.FixtureRequest) -> Iterator[tuple[ControlPlane, RealNode]]:
    """A second control plane with a REAL node (tests/cluster/node.py): kubelet, containerd, runc, the
    CNI bridge, kube-proxy and CoreDNS on this machine, the project's images loaded, KubeRay (its
    newest version served, KUBERAY_NEWEST_VERSION) reaching Ray heads through the apiserver's proxy,
    and a tainted fake GPU node beside it. Started lazily by
    the first `real_node` test; every host change is undone at the end of the session (checked)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def log(msg: str) -> None:
        if reporter is not None and request.config.getoption("verbose") > 0:
            reporter.write_line(f"[real node] {msg}")

    # A SIGTERM (a CI timeout, `kill`) must still run the teardown below: host changes are undone
    # there (and the next start cleans what a SIGKILL left).
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        # The newest KubeRay the module proxy serves (the operator's cluster tests run KUBERAY_VERSION).
        newest = read_versions()["KUBERAY_NEWEST_VERSION"]
        cp = ControlPlane(log=log, node_ip=host_ip(), binaries=Binaries.locate(kuberay=newest))
        node = RealNode(cp, log=log)
    except TestbedError as e:
        pytest.fail(str(e), pytrace=False)
    _STATE["real_cluster"] = (cp, node)
    failures_before = request.session.testsfailed
    try:
        try:
            cp.start()
            node.start()
        except Exception as e:
            pytest.fail(
                f"real node failed to start: {e}\n{cp.logs_report()}\n{node.logs_report()}", pytrace=False
            )
        yield cp, node
    finally:
        _STATE.pop("real_cluster", None)
        node.stop()
        cp.stop()
        signal.signal(signal.SIGTERM, previous)
        failed = request.session.testsfailed > failures_before
        if failed or os.environ.get("INTERLACE_TESTBED_KEEP"):
            if reporter is not None:
                reporter.write_line(f"[real node] logs kept in {cp.workdir}")
        else:
            shutil.rmtree(cp.workdir, ignore_errors=True)
    left = host_leftovers()
    if left:
        pytest.fail("the real node left host changes behind:\n  " + "\n  ".join(left), pytrace=False)


@pytest.fixture
def real_namespace(real_cluster: tuple[ControlPlane, RealNode], request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the real-node cluster, deleted afterwards. With `@pytest.mark.pod_security(level)`
    the namespace enforces that Pod Security level (the apiserver's PodSecurity admission refuses any
    pod that breaks it: the test's own, the operator's Ray pods, KubeRay's submitter)."""
    cp, _ = real_cluster
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:30].strip("-") or "t"
    labels = {"interlace.dev/test": "true"}
    marker = request.node.get_closest_marker("pod_security")
    if marker is not None:
        level = marker.args[0]
        labels |= {f"pod-security.kubernetes.io/{mode}": level for mode in ("enforce", "warn", "audit")}
    ns = cp.create_namespace(prefix=prefix, labels=labels)
    yield ns
    if cp.running:
        cp.delete_namespace(ns)


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane) -> Iterator[Kueue]:
    """Kueue's controller (ray.io/rayjob integration, webhooks on 127.0.0.1) beside the session's
    control plane, for one test module: stopped afterwards, its webhook configurations and
    ClusterQueues removed, so modules that do not ask for it see no Kueue. Build it once with
    `bash hack/testbed/build.sh kueue`. `kueue.queue(namespace)` makes a ClusterQueue + LocalQueue."""
    try:
        control_plane.binaries.require("kueue", "kueue_crd_dir", "kueue_source")
    except TestbedError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        started = control_plane.start_kueue()
    except Exception as e:
        pytest.fail(f"Kueue failed to start: {e}\n{control_plane.logs_report()}", pytrace=False)
    yield started
    control_plane.stop_kueue()


@pytest.fixture(scope="session")
def kube_admin(control_plane: ControlPlane) -> Path:
    """Path of the admin kubeconfig (system:masters). Set it as KUBECONFIG for kopf/kubernetes."""
    return control_plane.admin_kubeconfig


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for finalization)."""
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:30].strip("-") or "t"
    ns = control_plane.create_namespace(prefix=prefix, labels={"interlace.dev/test": "true"})
    yield ns
    if control_plane.running:
        control_plane.delete_namespace(ns)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tail of every component's log to failed tests that used the control plane."""
    outcome = yield
    report = outcome.get_result()
    cp = _STATE.get("control_plane")
    if (
        report.failed
        and isinstance(cp, ControlPlane)
        and "control_plane" in getattr(item, "fixturenames", ())
    ):
        report.sections.append(("control plane logs", cp.logs_report(lines=20)))
    real = _STATE.get("real_cluster")
    if report.failed and isinstance(real, tuple) and "real_cluster" in getattr(item, "fixturenames", ()):
        rcp, node = real
        report.sections.append(("real-node cluster logs", rcp.logs_report(lines=20) + "\n" + node.logs_report()))
