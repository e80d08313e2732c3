"""The Kubernetes status sink: the Ray job writes its own progress into its PruneJob's status.

Kubeflow Trainer v2 style push: the job knows its stage, step, loss and ETA; the operator does not.
The job patches ONLY the fields it owns (`stage`, `progress`, `plan`, `results`; the operator owns
the rest, see `interlace.schema.spec.PruneJobStatus`) with JSON merge patches on the `/status` subresource,
authenticated as the job's ServiceAccount, whose Role allows exactly `get`/`patch` on this one
PruneJob's status (the operator creates it). So a job cannot touch another job or any spec. Pods that
run as an allow-listed shared ServiceAccount get the per-job account's token as a file
(INTERLACE_STATUS_TOKEN_DIR) and write with it: the same reach, whatever account the pods run as.

* Rate limit: `progress` is sent at most every `min_interval` seconds (the newest value wins; a timer
  sends the last one so the status never stays stale); `stage`, `plan` and `results` go out at once
  (they flush a pending progress first, so the order in status is the order of the calls).
* Failures: transient API errors (5xx, 429, connection errors) are retried with tenacity; anything
  else (403, 404, 422) is logged and dropped: a status report must never fail a multi-hour training
  run. `strict=True` raises instead (tests).
* Outside Kubernetes `from_env()` returns None and nothing is imported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from interlace.errors import InterlaceError
from interlace.runtime.progress import now_rfc3339
from interlace.schema.spec import API_GROUP, API_VERSION, PLURAL, LayerPlan, Results
from interlace.schema.status import Phase, Progress
from interlace.settings import settings

log = logging.getLogger(__name__)

ENV_PRUNEJOB = "INTERLACE_PRUNEJOB"
DEFAULT_INTERVAL = 10.0
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (10, 30)


def _transient(err: BaseException) -> bool:
    status = getattr(err, "status", None)
    if status is not None:
        return status in (429, 500, 502, 503, 504)
    return isinstance(err, (ConnectionError, TimeoutError, OSError)) or type(err).__module__.startswith("urllib3")


def _full(model: Any) -> dict[str, Any]:
    """Every field, unset ones as null, so a merge patch also removes keys left by an earlier report."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=False)


def make_api_client(kubeconfig: str | None = None) -> Any:
    """In-cluster ServiceAccount config (token refreshed as it rotates), else KUBECONFIG.

    In a pod that runs as a shared ServiceAccount the operator mounts the per-job account's token
    (INTERLACE_STATUS_TOKEN_DIR): status writes then use it, so they reach this job's PruneJob only."""
    try:
        from kubernetes import client, config
        from kubernetes.config.incluster_config import InClusterConfigLoader
    except ImportError:
        raise InterlaceError(
            f"{ENV_PRUNEJOB} is set but the `kubernetes` package is missing: "
            "pip install 'interlace-operator[kube]' (the runtime image has it)"
        ) from None
    cfg = client.Configuration()
    token_dir = settings().status_token_dir
    if kubeconfig is None and settings().in_cluster and token_dir is not None:
        token, ca = token_dir / "token", token_dir / "ca.crt"
        if not (token.is_file() and ca.is_file()):
            raise InterlaceError(
                f"INTERLACE_STATUS_TOKEN_DIR={token_dir} has no token and ca.crt: the PruneJob's token Secret "
                "(<prunejob>-job-token) is not mounted there"
            )
        InClusterConfigLoader(token_filename=str(token), cert_filename=str(ca)).load_and_set(cfg)
    elif kubeconfig is None and settings().in_cluster:
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


class KubeStatusReporter:
    """`interlace.runtime.progress.Reporter` that merge-patches the PruneJob's /status."""

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        api_client: Any = None,
        kubeconfig: str | None = None,
        min_interval: float = DEFAULT_INTERVAL,
        strict: bool = False,
        attempts: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.name = name
        self.min_interval = float(min_interval)
        self.strict = strict
        self.attempts = attempts
        self._clock = clock
        self._api_client = api_client or make_api_client(kubeconfig)
        self._custom = client.CustomObjectsApi(self._api_client)
        self._lock = threading.RLock()
        self._last_progress_sent = float("-inf")
        self._pending: dict[str, Any] | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        self.patches_sent = 0

    # ------------------------------------------------------------------ Reporter protocol

    def stage(self, stage: Phase, message: str = "") -> None:
        status: dict[str, Any] = {"stage": str(Phase(stage).value)}
        if message:
            status["progress"] = {"message": message, "lastUpdateTime": now_rfc3339()}
        self._send_now(status)

    def progress(self, progress: Progress) -> None:
        body = _full(progress)
        body["lastUpdateTime"] = body.get("lastUpdateTime") or now_rfc3339()
        with self._lock:
            if self._closed:
                return
            wait = self._last_progress_sent + self.min_interval - self._clock()
            if wait <= 0:
                self._pending = None
                self._cancel_timer()
                self._last_progress_sent = self._clock()
                self._patch({"progress": body})
                return
            self._pending = body
            if self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def plan(self, plan: LayerPlan) -> None:
        self._send_now({"plan": _full(plan)})

    def results(self, results: Results) -> None:
        self._send_now({"results": _full(results)})

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            self._cancel_timer()

    # ------------------------------------------------------------------ internals

    def flush(self) -> None:
        """Send the newest throttled progress report, if any."""
        with self._lock:
            self._timer = None
            body, self._pending = self._pending, None
            if body is not None:
                self._last_progress_sent = self._clock()
                self._patch({"progress": body})

    def _send_now(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._cancel_timer()
            if self._pending is not None:
                status = {**status, "progress": {**self._pending, **status.get("progress", {})}}
                self._pending = None
                self._last_progress_sent = self._clock()
            self._patch(status)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def patch_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """One merge patch of /status, retried on transient errors; raises on anything else."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        for attempt in Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=10),
            reraise=True,
        ):
            with attempt:
                result = self._custom.patch_namespaced_custom_object_status(
                    API_GROUP, API_VERSION, self.namespace, PLURAL, self.name, {"status": status},
                    _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT,
                )
        self.patches_sent += 1
        return result

    def _patch(self, status: dict[str, Any]) -> None:
        try:
            self.patch_status(status)
        except Exception as err:
            if self.strict:
                raise
            log.warning(
                "could not report %s to PruneJob %s/%s: %s",
                ",".join(status), self.namespace, self.name, getattr(err, "reason", None) or err,
            )


def from_env(**kwargs: Any) -> KubeStatusReporter | None:
    """The sink for the PruneJob named by INTERLACE_PRUNEJOB="<namespace>/<name>", else None.

    The operator sets that variable on the Ray pods; without it (local runs) nothing is imported.
    INTERLACE_STATUS_INTERVAL overrides the progress rate limit (seconds)."""
    env = settings()
    ref = (env.prunejob or "").strip()
    if not ref:
        return None
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise InterlaceError(f"{ENV_PRUNEJOB}={ref!r}: expected <namespace>/<name>")
    if "min_interval" not in kwargs and env.status_interval is not None:
        kwargs["min_interval"] = env.status_interval
    return KubeStatusReporter(namespace, name, **kwargs)
