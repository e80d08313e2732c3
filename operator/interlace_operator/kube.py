"""The operator's Kubernetes calls, through the official synchronous `kubernetes` client.

kopf does the watching (with reconnects and timeouts); the reconciler, which runs in worker threads,
does its reads and writes here. Everything is plain dicts in and out, every request has a timeout,
status writes are JSON merge patches on the /status subresource, and children are created or
adopted, never blindly replaced.

The only module that knows the client: the answers the reconciler acts on are translated here, where
the call is made, into the domain's errors (NameTaken, Refused, Stale, KubeRayMissing, KueueMissing,
ConflictError; a 404 on a read is None). Any other ApiException propagates as it is: a transient
failure the work queue retries with backoff.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from interlace.schema.spec import API_GROUP, API_VERSION, PLURAL
from interlace_operator.status import rfc3339, utcnow

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (10, 30)  # connect, read (seconds)
MERGE_PATCH = "application/merge-patch+json"

KUEUE_GROUP = "kueue.x-k8s.io"
# v1beta2 since Kueue 0.15; v1beta1 for older releases (the fields read here are the same in both).
KUEUE_VERSIONS = ("v1beta2", "v1beta1")
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


class NameTaken(RuntimeError):
    """A create found an object of that name (409): create-or-adopt decides whether it is ours."""


class Refused(RuntimeError):
    """The API server refuses the object (400, 403 or 422: schema, admission, a webhook); the message is
    the API's own, what kubectl would print."""


class Stale(RuntimeError):
    """A write with a resourceVersion precondition found the object changed since it was read (409)."""


class KubeRayMissing(RuntimeError):
    """The RayJob CRD (ray.io/v1) is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "the RayJob CRD (rayjobs.ray.io, ray.io/v1) is not installed in this cluster: install the KubeRay "
            "operator (>= 1.3); this PruneJob starts once it is there"
        )


def api_message(err: Exception) -> str:
    """The `message` of a Kubernetes Status answer (what kubectl would print)."""
    try:
        return str(json.loads(getattr(err, "body", "") or "{}").get("message") or err)
    except ValueError:
        return str(err)


class ConflictError(RuntimeError):
    """A child with our deterministic name exists but belongs to something else (or is being deleted)."""


class KueueMissing(RuntimeError):
    """spec.resources.queueName is set but the cluster serves no Kueue Workload API."""

    def __init__(self) -> None:
        super().__init__(
            "the RayJob is queued for Kueue (spec.resources.queueName), but this cluster serves no Kueue "
            "Workload API (workloads.kueue.x-k8s.io): install Kueue with the ray.io/rayjob integration"
        )


def make_api_client(kubeconfig: str | None = None, pool_size: int = 32, *, in_cluster: bool = False) -> Any:
    """ApiClient from the in-cluster service account (`OperatorConfig.in_cluster`), else KUBECONFIG /
    ~/.kube/config."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None and in_cluster:
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size
    cfg.retries = 2
    return client.ApiClient(cfg)


class Kube:
    """Thin wrapper: dict-based CRUD for the kinds the operator touches."""

    def __init__(self, api_client: Any, component: str = "interlace-operator") -> None:
        from kubernetes import client

        self.api = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self._kueue_version: str | None = None  # the Workload API version that answered last
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.component = component
        self.instance = socket.gethostname()
        # Events are posted off the reconcile thread: they are best effort and must not slow it.
        self._events = ThreadPoolExecutor(max_workers=2, thread_name_prefix="events")

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _status(err: Exception) -> int | None:
        return getattr(err, "status", None)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    # ------------------------------------------------------------------ PruneJobs

    def get_prunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_prunejob_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch status; with `resource_version` the write raises Stale if the object changed."""
        from kubernetes.client.exceptions import ApiException

        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, body,
                _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as err:
            if err.status == 409 and resource_version:
                raise Stale(f"PruneJob {namespace}/{name} changed since it was read") from None
            raise

    # ------------------------------------------------------------------ RayJobs

    def get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayjobs", name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def create_rayjob(self, body: dict[str, Any]) -> dict[str, Any]:
        """Strict field validation: a field the installed KubeRay CRD lacks (authOptions before v1.5.1) is
        refused (400), not silently pruned (a Ray cluster without its token authentication). Raises
        NameTaken (409) or KubeRayMissing (404: no RayJob CRD)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.create_namespaced_custom_object(
                "ray.io", "v1", body["metadata"]["namespace"], "rayjobs", body, field_validation="Strict",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as err:
            if err.status == 404:
                raise KubeRayMissing() from None
            if err.status == 409:
                raise NameTaken(body["metadata"]["name"]) from None
            raise

    def patch_rayjob(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayjobs", name, patch,
            _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT,
        )

    def delete_rayjob(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayjobs", name,
                # Foreground: the RayJob stays (with a deletionTimestamp) until its RayCluster and the
                # cluster's pods are gone, so "the RayJob is gone" means "its GPUs are free" (the
                # next attempt waits for that: machine.py).
                propagation_policy="Foreground", _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as err:
            if err.status != 404:
                raise

    # ------------------------------------------------------------------ pods and their events

    def pods_and_warnings(
        self, namespace: str, selector: str, involved: list[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The pods matching `selector` and the Warning events of the objects named `involved`. A
        Forbidden answer (a chart older than the rules that grant this) reads as none: these only
        explain a wait, they never decide one."""
        from kubernetes.client.exceptions import ApiException

        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT)
            events = [
                e
                for name in involved
                for e in self.core.list_namespaced_event(
                    namespace, field_selector=f"involvedObject.name={name},type=Warning",
                    _request_timeout=REQUEST_TIMEOUT,
                ).items
            ]
        except ApiException as err:
            if err.status == 403:
                log.warning("cannot list pods or events in %s (RBAC): %s", namespace, err.reason)
                return [], []
            raise
        return [self._plain(p) for p in pods.items], [self._plain(e) for e in events]

    # ------------------------------------------------------------------ Kueue Workloads

    def workload_of(self, rayjob: dict[str, Any]) -> dict[str, Any] | None:
        """The Kueue Workload of a RayJob: the one labelled kueue.x-k8s.io/job-uid=<its uid> and
        controlled by it (Kueue creates it; its name has a hash in it). None: none yet. Raises
        KueueMissing when no Workload API is served (Kueue is not installed)."""
        from kubernetes.client.exceptions import ApiException

        meta = rayjob["metadata"]
        for version in self._kueue_versions():
            try:
                items = self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP, version, meta["namespace"], "workloads",
                    label_selector=f"{KUEUE_JOB_UID_LABEL}={meta['uid']}", _request_timeout=REQUEST_TIMEOUT,
                ).get("items") or []
            except ApiException as err:
                if err.status == 404:
                    continue
                raise
            self._kueue_version = version
            owned = [w for w in items if _controller_uid(w) == meta["uid"]]
            return owned[0] if owned else None
        self._kueue_version = None
        raise KueueMissing()

    def _kueue_versions(self) -> tuple[str, ...]:
        known = self._kueue_version
        return (known, *(v for v in KUEUE_VERSIONS if v != known)) if known else KUEUE_VERSIONS

    def patch_workload(self, workload: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        group, _, version = workload["apiVersion"].partition("/")
        meta = workload["metadata"]
        return self.custom.patch_namespaced_custom_object(
            group, version, meta["namespace"], "workloads", meta["name"], patch,
            _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT,
        )

    # ------------------------------------------------------------------ children (create or adopt)

    def _crud(self, kind: str) -> tuple[Any, Any, Any]:
        return {
            "ServiceAccount": (
                self.core.create_namespaced_service_account,
                self.core.read_namespaced_service_account,
                self.core.replace_namespaced_service_account,
            ),
            "Role": (self.rbac.create_namespaced_role, self.rbac.read_namespaced_role, self.rbac.replace_namespaced_role),
            "RoleBinding": (
                self.rbac.create_namespaced_role_binding,
                self.rbac.read_namespaced_role_binding,
                self.rbac.replace_namespaced_role_binding,
            ),
            "Secret": (
                self.core.create_namespaced_secret,
                self.core.read_namespaced_secret,
                self.core.replace_namespaced_secret,
            ),
            "NetworkPolicy": (
                self.networking.create_namespaced_network_policy,
                self.networking.read_namespaced_network_policy,
                self.networking.replace_namespaced_network_policy,
            ),
        }[kind]

    def dry_run_create(self, body: dict[str, Any]) -> None:
        """Create `body` with server-side dry run (dryRun=All): admission, schema validation and
        webhooks run, nothing is stored. Raises NameTaken (409: create-or-adopt deals with it later),
        Refused (400/403/422), KubeRayMissing (404 for a RayJob)."""
        from kubernetes.client.exceptions import ApiException

        ns = body["metadata"]["namespace"]
        try:
            if body["kind"] == "RayJob":
                self.custom.create_namespaced_custom_object(
                    "ray.io", "v1", ns, "rayjobs", body, dry_run="All", field_validation="Strict",
                    _request_timeout=REQUEST_TIMEOUT,
                )
                return
            create, _, _ = self._crud(body["kind"])
            create(ns, body, dry_run="All", _preload_content=False, _request_timeout=REQUEST_TIMEOUT).data  # noqa: B018
        except ApiException as err:
            if err.status == 409:
                raise NameTaken(body["metadata"]["name"]) from None
            if err.status == 404 and body["kind"] == "RayJob":
                raise KubeRayMissing() from None
            if err.status in (400, 403, 422):
                raise Refused(api_message(err)) from None
            raise

    def ensure(self, body: dict[str, Any], owner_uid: str, content_keys: tuple[str, ...] = ()) -> str:
        """Create `body`, or adopt the existing object of that name if this PruneJob (its UID) is its
        controller. Keys in `content_keys` (e.g. "data", "rules") are brought up to date. Returns
        "created", "adopted" or "updated"; raises ConflictError for anything else under the name."""
        from kubernetes.client.exceptions import ApiException

        create, read, replace = self._crud(body["kind"])
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            # _preload_content=False: the typed model of the answer is never used, skip building it.
            create(ns, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT).data  # noqa: B018
            return "created"
        except ApiException as err:
            if err.status != 409:
                raise
        existing = self._plain(read(name, ns, _request_timeout=REQUEST_TIMEOUT))
        self.check_owner(existing, owner_uid)
        changed = [k for k in content_keys if existing.get(k) != body.get(k)]
        meta = existing["metadata"]
        if changed:
            merged = dict(existing)
            for k in content_keys:
                merged[k] = body.get(k)
            merged["metadata"] = {**meta, "ownerReferences": body["metadata"]["ownerReferences"]}
            replace(name, ns, merged, _request_timeout=REQUEST_TIMEOUT)
            return "updated"
        return "adopted"

    @staticmethod
    def check_owner(obj: dict[str, Any], owner_uid: str, *, deleting_ok: bool = False) -> None:
        """Raise ConflictError unless `obj`'s controller ownerReference is `owner_uid`.

        Labels prove nothing: after `kubectl delete pj X --cascade=orphan` and a new PruneJob X, the
        old children carry our labels and names but belong to no one; adopting them would make the
        new PruneJob report the old run's results. An object being deleted is a conflict for
        create-or-adopt, unless `deleting_ok`."""
        meta = obj.get("metadata", {})
        kind, name = obj.get("kind", "object"), meta.get("name")
        uid = _controller_uid(obj)
        if meta.get("deletionTimestamp") and not (deleting_ok and uid == owner_uid):
            raise ConflictError(f"{kind} {name} is being deleted; waiting for it to go away")
        if uid == owner_uid:
            return
        whose = "no controller (an orphan, e.g. of `kubectl delete --cascade=orphan`)" if uid is None else (
            f"controller uid {uid}"
        )
        raise ConflictError(
            f"{kind} {name} already exists and is not controlled by this PruneJob ({whose}); it is not "
            "adopted: delete it, or re-create this PruneJob under another name"
        )

    # ------------------------------------------------------------------ events

    def post_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, *, name: str | None = None
    ) -> None:
        """A core/v1 Event on the PruneJob (shown by `kubectl describe` and `kubectl get events`).
        Best effort, asynchronous: a lost event must never fail or slow a reconcile. With `name`
        (deterministic), posting the same event twice leaves one: the second gets AlreadyExists."""
        self._events.submit(self._post_event, involved, type_, reason, message, name)

    def _post_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, name: str | None = None
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = involved["metadata"]
        now = rfc3339(utcnow())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name or f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", f"{API_GROUP}/{API_VERSION}"),
                "kind": involved.get("kind", "PruneJob"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": f"{API_GROUP}/operator",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(
                meta["namespace"], body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status != 409:  # 409: this very event was posted before (a replay)
                log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err)
        except Exception as err:  # events are best effort
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], err)


def _controller_uid(obj: dict[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def controller_of(obj: dict[str, Any], kind: str = "PruneJob") -> str | None:
    """Name of the controlling owner of `kind`, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref.get("name")
    return None


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
