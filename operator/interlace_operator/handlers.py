"""kopf wiring: settings, the two watches, and the reconcile workers.

kopf watches PruneJobs and the RayJobs the operator made; both handlers only enqueue the PruneJob's
key, and `interlace_operator.reconcile` does the work in worker threads (see workqueue.py for why).

kopf is configured to leave no trace on the objects:

* only `@kopf.on.event` handlers are used: kopf then writes no progress or diff-base state at all,
  and adds no finalizer (finalizers are for external cleanup; owner references + the garbage
  collector remove every child). Progress/diff-base storage is still pointed at annotations under
  interlace.dev, so a future change-detecting handler could never write into status (undeclared
  status fields would be silently dropped by the API server anyway);
* kopf's own event posting is off; the reconciler posts the events users should see;
* watches have a server-side timeout and a client-side timeout 30 s longer, so a dead connection is
  noticed, and every relist re-enqueues every PruneJob (a periodic resync for free).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Hashable
from typing import Any, cast

import kopf

from interlace.schema.spec import API_GROUP, API_VERSION, PLURAL
from interlace_operator import names
from interlace_operator.config import OperatorConfig
from interlace_operator.kube import ConflictError, Kube, controller_of, make_api_client
from interlace_operator.leader import LeaderElector, LeaseConfig, default_identity
from interlace_operator.metrics import Metrics, serve
from interlace_operator.reconcile import Reconciler, Requeue
from interlace_operator.status import TERMINAL_PHASES
from interlace_operator.workqueue import WorkQueue

log = logging.getLogger("interlace_operator")


# Set when this replica lost the leader Lease; __main__ then exits with status 1.
LOST_LEADERSHIP = threading.Event()


class Runtime:
    """Everything the handlers share: config, API client, reconciler, queue, metrics, leader elector."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.metrics = Metrics.get()
        self.api_client = make_api_client(pool_size=max(8, 2 * config.workers), in_cluster=config.in_cluster)
        self.kube = Kube(self.api_client, component=names.MANAGED_BY)
        self.reconciler = Reconciler(self.kube, config, self.metrics)
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self.queue = WorkQueue(self._reconcile, workers=config.workers, on_error=self._on_error)
        self.elector: LeaderElector | None = None

    def start(self) -> None:
        """Without leader election: reconcile now. With it: keep queueing keys from the watches, and
        start the reconcile workers only once this replica holds the Lease (leader.py)."""
        cfg = self.config
        if not cfg.leader_election:
            self.queue.start()
            return
        if not cfg.lease_namespace:
            raise RuntimeError("INTERLACE_LEADER_ELECTION is on but no Lease namespace is known: set "
                               "INTERLACE_LEADER_ELECTION_NAMESPACE or POD_NAMESPACE")
        self.metrics.set_leader(False)

        def started() -> None:
            self.metrics.set_leader(True)
            self.queue.start()

        def stopped() -> None:
            self.metrics.set_leader(False)
            self.queue.stop()
            LOST_LEADERSHIP.set()
            # Stop kopf the way a kubelet does (kopf handles SIGTERM: cleanup handlers, then exit);
            # __main__ exits non-zero and the pod restarts as a standby. (A threading.Event as kopf's
            # stop_flag would park a thread in asyncio's default executor and hang the exit.)
            os.kill(os.getpid(), signal.SIGTERM)

        self.elector = LeaderElector(
            self.api_client,
            LeaseConfig(namespace=cfg.lease_namespace, name=cfg.lease_name, identity=default_identity(cfg.pod_name),
                        lease_duration=cfg.lease_duration_seconds, renew_deadline=cfg.lease_renew_deadline_seconds,
                        retry_period=cfg.lease_retry_period_seconds),
            on_started_leading=started,
            on_stopped_leading=stopped,
        )
        self.elector.start()

    def stop(self) -> None:
        self.queue.stop()
        if self.elector is not None:
            self.elector.release()

    def _reconcile(self, key: Hashable) -> float | None:
        namespace, name = cast(tuple[str, str], key)
        result = self.reconciler.reconcile(namespace, name)
        with self._lock:
            self._failures.pop(key, None)
        return result

    def _on_error(self, key: Hashable, err: BaseException) -> float:
        if isinstance(err, Requeue):
            log.debug("requeue %s in %.1fs: %s", key, err.delay, err)
            return err.delay
        with self._lock:
            n = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(60.0, 0.5 * 2 ** (n - 1))
        self.metrics.reconcile_errors.labels(type(err).__name__).inc()
        level = logging.WARNING if isinstance(err, ConflictError) or n < 3 else logging.ERROR
        log.log(level, "reconcile of %s/%s failed (%d in a row, retry in %.1fs): %s", *key, n, delay, err,  # type: ignore[misc]
                exc_info=level == logging.ERROR)
        return delay


_runtime: Runtime | None = None


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the operator has not started (no kopf startup handler ran)")
    return _runtime


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    config = OperatorConfig.from_env()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/operator"
    settings.posting.enabled = False
    settings.watching.server_timeout = int(config.watch_timeout_seconds)  # the API wants an integer
    settings.watching.client_timeout = config.watch_timeout_seconds + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    settings.batching.batch_window = 0.05
    if _runtime is None:
        _runtime = Runtime(config)
        serve(config.metrics_port)
        _runtime.start()
    log.info(
        "interlace-operator started: namespaces=%s runtime image=%s workers=%d%s",
        ",".join(config.namespaces) or "(all)", config.runtime_image, config.workers,
        f"; leader election on Lease {config.lease_namespace}/{config.lease_name} as "
        f"{_runtime.elector.identity}" if _runtime.elector else "",
    )


@kopf.on.cleanup()
def shutdown(**_: Any) -> None:
    global _runtime
    if _runtime is not None:
        _runtime.stop()
        _runtime = None


# kopf types `namespace` as optional (cluster-scoped resources); PruneJobs and RayJobs are namespaced.
@kopf.on.event(API_GROUP, API_VERSION, PLURAL)  # type: ignore[arg-type]
async def prunejob_event(event: kopf.RawEvent, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    rt = runtime()
    if event.get("type") == "DELETED":
        rt.queue.forget((namespace, name))
        rt.metrics.forget(namespace, name)
        rt.reconciler.forget(namespace, name)
        return
    phase = (body.get("status") or {}).get("phase")
    rt.metrics.set_phase(namespace, name, phase)
    rt.metrics.set_info(namespace, name, dict(body))
    if rt.reconciler.writer.is_own_write("PruneJob", namespace, name, body.metadata.get("resourceVersion")):
        return  # the echo of our own status patch: that reconcile already decided what comes next
    if phase in TERMINAL_PHASES and (body.get("status") or {}).get("observedGeneration") == body.metadata.get(
        "generation"
    ):
        return  # finished and unchanged: nothing to do
    rt.queue.add((namespace, name))


@kopf.on.event("ray.io", "v1", "rayjobs", labels={names.LABEL_MANAGED_BY: names.MANAGED_BY})  # type: ignore[arg-type]
async def rayjob_event(body: kopf.Body, namespace: str, **_: Any) -> None:
    rt = runtime()
    owner = controller_of(dict(body))
    if not owner:
        return
    if rt.reconciler.writer.is_own_write("RayJob", namespace, body.metadata.get("name"), body.metadata.get("resourceVersion")):
        return  # the echo of our own create/patch
    rt.queue.add((namespace, owner))
