"""The testbed is a real control plane: behaviour that no fake API server reproduces.

One session-scoped cluster (tests/cluster/fixtures.py), a fresh namespace per test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.testbed import (
    GPU_NODE_POOL_LABELS,
    Component,
    ControlPlane,
    KubectlError,
    read_versions,
)

pytestmark = pytest.mark.cluster

VERSIONS = read_versions()
GROUP = "testbed.interlace.dev"
CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def widget_crd(control_plane: ControlPlane):
    """A namespaced CRD with a CEL rule and the status subresource."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["minReplicas", "maxReplicas"],
                                    "properties": {
                                        "minReplicas": {"type": "integer", "minimum": 0},
                                        "maxReplicas": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.minReplicas <= self.maxReplicas",
                                            "message": CEL_MESSAGE,
                                        }
                                    ],
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    control_plane.apply(crd)
    control_plane.wait_crds_established(f"widgets.{GROUP}", timeout=60)
    # Discovery of a fresh CRD can lag behind Established for a moment.
    control_plane.wait_for(
        lambda: control_plane.kubectl("get", f"widgets.{GROUP}", "-A", check=False).returncode == 0,
        timeout=30,
        what="widgets to be served",
    )
    yield f"widgets.{GROUP}"
    control_plane.kubectl("delete", "crd", f"widgets.{GROUP}", "--wait=false", check=False)


def widget(name: str, min_replicas: int, max_replicas: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
    }


def gone(cp: ControlPlane, kind: str, name: str, namespace: str) -> bool:
    out = cp.kubectl("get", kind, name, "-n", namespace, "-o", "name", "--ignore-not-found").stdout
    return not out.strip()


# --------------------------------------------------------------------------- the cluster itself


def test_versions_and_gpu_node(control_plane: ControlPlane):
    version = control_plane.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"] == VERSIONS["K8S_VERSION"]
    assert version["clientVersion"]["gitVersion"] == VERSIONS["K8S_VERSION"], "not the pinned kubectl"

    node = control_plane.kubectl_json("get", "node", control_plane.gpu_node_names[0])
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert {k: node["metadata"]["labels"].get(k) for k in GPU_NODE_POOL_LABELS} == GPU_NODE_POOL_LABELS
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", "kwok must keep the fake node Ready"
    assert not node["spec"].get("taints"), "the GPU node must be schedulable"


# --------------------------------------------------------------------------- CRD validation and status


def test_cel_rule_rejects_bad_object(control_plane: ControlPlane, widget_crd: str, namespace: str):
    control_plane.create(widget("good", 1, 3), namespace=namespace)

    with pytest.raises(KubectlError) as err:
        control_plane.create(widget("bad", 5, 2), namespace=namespace)
    assert CEL_MESSAGE in err.value.stderr
    assert "Invalid" in err.value.stderr
    assert gone(control_plane, widget_crd, "bad", namespace)

    # The rule also guards updates of an existing object.
    with pytest.raises(KubectlError) as err:
        control_plane.kubectl(
            "patch", widget_crd, "good", "-n", namespace, "--type=merge", "-p", '{"spec":{"maxReplicas":0}}'
        )
    assert CEL_MESSAGE in err.value.stderr
    # And the OpenAPI schema (minimum: 0) is enforced too.
    with pytest.raises(KubectlError, match=r"minReplicas"):
        control_plane.create(widget("negative", -1, 2), namespace=namespace)


def test_status_subresource_separates_spec_and_status(
    control_plane: ControlPlane, widget_crd: str, namespace: str
):
    created = control_plane.create(widget("w", 1, 3), namespace=namespace)
    assert created["metadata"]["generation"] == 1

    # Through /status: the status change lands, the spec change is ignored.
    control_plane.kubectl(
        "patch",
        widget_crd,
        "w",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"maxReplicas": 99}, "status": {"phase": "Ready"}}),
    )
    obj = control_plane.kubectl_json("get", widget_crd, "w", "-n", namespace)
    assert obj["status"] == {"phase": "Ready"}
    assert obj["spec"]["maxReplicas"] == 3
    assert obj["metadata"]["generation"] == 1, "a status write must not bump the generation"

    # Through the main resource: the spec change lands, the status change is ignored.
    control_plane.kubectl(
        "patch",
        widget_crd,
        "w",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"maxReplicas": 7}, "status": {"phase": "Hacked"}}),
    )
    obj = control_plane.kubectl_json("get", widget_crd, "w", "-n", namespace)
    assert obj["spec"]["maxReplicas"] == 7
    assert obj["status"] == {"phase": "Ready"}
    assert obj["metadata"]["generation"] == 2


# --------------------------------------------------------------------------- RBAC


def test_restricted_user_gets_only_what_its_role_grants(control_plane: ControlPlane, namespace: str):
    kubernetes = pytest.importorskip("kubernetes")
    alice, bob = control_plane.restricted_users[:2]
    control_plane.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "configmap-reader", "namespace": namespace},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "alice-reads-configmaps", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "configmap-reader",
                },
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": alice}],
            },
        ]
    )
    control_plane.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=a=1")

    # The Python client with alice's kubeconfig: allowed reads, 403 on everything else.
    api = kubernetes.client.CoreV1Api(control_plane.python_client(control_plane.kubeconfig(alice)))
    assert api.read_namespaced_config_map("settings", namespace).data == {"a": "1"}
    assert [
        c.metadata.name
        for c in api.list_namespaced_config_map(namespace).items
        if c.metadata.name == "settings"
    ]
    denied = [
        lambda: api.create_namespaced_config_map(
            namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
        ),
        lambda: api.delete_namespaced_config_map("settings", namespace),
        lambda: api.list_namespaced_secret(namespace),
        lambda: api.list_namespaced_config_map("default"),
    ]
    for call in denied:
        with pytest.raises(kubernetes.client.ApiException) as err:
            call()
        assert err.value.status == 403, err.value

    # bob has no binding at all; kubectl reports the same 403.
    with pytest.raises(KubectlError) as err:
        control_plane.kubectl("get", "configmaps", "-n", namespace, user=bob)
    assert "Forbidden" in err.value.stderr and bob in err.value.stderr
    assert (
        control_plane.kubectl(
            "auth", "can-i", "list", "configmaps", "-n", namespace, user=alice
        ).stdout.strip()
        == "yes"
    )


def test_service_account_kubeconfig_acts_as_the_service_account(control_plane: ControlPlane, namespace: str):
    control_plane.kubectl("create", "serviceaccount", "runner", "-n", namespace)
    control_plane.kubectl(
        "create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "runner-reads-pods",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:runner",
        "-n",
        namespace,
    )
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "runner")

    whoami = control_plane.kubectl_json("auth", "whoami", kubeconfig=kubeconfig)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:runner"
    control_plane.kubectl("get", "pods", kubeconfig=kubeconfig)  # namespace comes from the kubeconfig
    with pytest.raises(KubectlError, match="Forbidden"):
        control_plane.kubectl("get", "secrets", kubeconfig=kubeconfig)


# --------------------------------------------------------------------------- controller-manager


def test_deleting_an_owner_garbage_collects_its_dependents(control_plane: ControlPlane, namespace: str):
    owner = control_plane.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}, "data": {"k": "v"}},
        namespace=namespace,
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    for kind, name in (("ConfigMap", "child-cm"), ("Secret", "child-secret")):
        control_plane.create(
            {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "ownerReferences": [ref]}},
            namespace=namespace,
        )
    control_plane.kubectl("create", "configmap", "bystander", "-n", namespace)

    control_plane.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    control_plane.wait_for(
        lambda: (
            gone(control_plane, "configmap", "child-cm", namespace)
            and gone(control_plane, "secret", "child-secret", namespace)
        ),
        timeout=60,
        what="the garbage collector to delete the dependents",
    )
    assert not gone(control_plane, "configmap", "bystander", namespace)

    # Orphan propagation: the dependent survives and loses its ownerReference.
    owner = control_plane.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner2"}}, namespace=namespace
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner["metadata"]["uid"]}
    control_plane.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orphan", "ownerReferences": [ref]}},
        namespace=namespace,
    )
    control_plane.kubectl("delete", "configmap", "owner2", "-n", namespace, "--cascade=orphan")
    orphan = control_plane.kubectl_json("get", "configmap", "orphan", "-n", namespace)
    assert not orphan["metadata"].get("ownerReferences")


# --------------------------------------------------------------------------- KubeRay + kwok + scheduler


def test_raycluster_gets_head_and_gpu_workers_running_on_the_fake_gpu_node(
    control_plane: ControlPlane, namespace: str
):
    container = {"name": "ray", "image": "rayproject/ray:2.46.0"}
    raycluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "prune", "namespace": namespace},
        "spec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {
                    "spec": {
                        "containers": [
                            {
                                **container,
                                "resources": {
                                    "requests": {"cpu": "1", "memory": "2Gi"},
                                    "limits": {"cpu": "1", "memory": "2Gi"},
                                },
                            }
                        ]
                    }
                },
            },
            "workerGroupSpecs": [
                {
                    "groupName": "gpu",
                    "replicas": 2,
                    "minReplicas": 0,
                    "maxReplicas": 8,
                    "rayStartParams": {},
                    "template": {
                        "spec": {
                            "nodeSelector": {"interlace.dev/node-pool": "gpu"},
                            "containers": [
                                {
                                    **container,
                                    "resources": {
                                        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
                                        "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
                                    },
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }
    control_plane.apply(raycluster)

    selector = "ray.io/cluster=prune"
    heads = control_plane.wait_for_pods(namespace, f"{selector},ray.io/node-type=head", count=1, timeout=120)
    workers = control_plane.wait_for_pods(
        namespace, f"{selector},ray.io/node-type=worker", count=2, timeout=120
    )
    gpu_nodes = set(control_plane.gpu_node_names)
    for pod in heads + workers:
        assert pod["spec"]["nodeName"] in gpu_nodes, "scheduled by kube-scheduler onto the kwok node"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "RayCluster", (
            "created by the KubeRay operator"
        )
    for pod in workers:
        ray = next(c for c in pod["spec"]["containers"] if c["name"] == "ray")
        assert ray["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["metadata"]["labels"]["ray.io/group"] == "gpu"

    # The operator sees the pods kwok reports and moves the RayCluster's status forward.
    status = control_plane.wait_for(
        lambda: (
            (
                s := control_plane.kubectl_json("get", "raycluster", "prune", "-n", namespace).get(
                    "status", {}
                )
            ).get("readyWorkerReplicas")
            == 2
            and s
        ),
        timeout=90,
        what="RayCluster status.readyWorkerReplicas == 2",
    )
    assert status.get("state") == "ready", status

    # The scheduler honours the fake GPU capacity: 8 GPUs per node and 2 per worker, so with one more
    # worker than fits, exactly that one stays Pending as Unschedulable for nvidia.com/gpu.
    fits = len(gpu_nodes) * 4
    control_plane.kubectl(
        "patch",
        "raycluster",
        "prune",
        "-n",
        namespace,
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": fits + 1}]),
    )
    control_plane.wait_for_pods(namespace, f"{selector},ray.io/node-type=worker", count=fits, timeout=120)

    def unschedulable() -> list[dict]:
        pods = control_plane.kubectl_json(
            "get", "pods", "-n", namespace, "-l", f"{selector},ray.io/node-type=worker"
        )
        return [
            c
            for p in pods["items"]
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
        ]

    pending = control_plane.wait_for(unschedulable, timeout=60, what="an Unschedulable worker")
    assert len(pending) == 1
    assert "nvidia.com/gpu" in pending[0]["message"], pending[0]


# --------------------------------------------------------------------------- helm against the API server


def test_helm_installs_a_chart(control_plane: ControlPlane, namespace: str, tmp_path: Path):
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        'apiVersion: v2\nname: mini\nversion: 0.1.0\nkubeVersion: ">=1.34.0-0"\n'
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
        "  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    out = control_plane.helm("version", "--short").stdout
    assert out.startswith(VERSIONS["HELM_VERSION"]), out
    control_plane.helm("install", "demo", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait")
    cm = control_plane.kubectl_json("get", "configmap", "demo-cm", "-n", namespace)
    assert cm["data"]["greeting"] == "hi"
    assert cm["data"]["kube"] == VERSIONS["K8S_VERSION"], "helm reads the server version"
    control_plane.helm("uninstall", "demo", "-n", namespace, "--wait")
    assert gone(control_plane, "configmap", "demo-cm", namespace)


# --------------------------------------------------------------------------- kopf with the kubeconfigs


def test_kopf_operator_runs_as_a_service_account(control_plane: ControlPlane, namespace: str, tmp_path: Path):
    """kopf reads KUBECONFIG: a ServiceAccount kubeconfig minted by the testbed is enough to run it."""
    pytest.importorskip("kopf")
    control_plane.kubectl("create", "serviceaccount", "kopf-op", "-n", namespace)
    control_plane.kubectl(
        "create", "role", "kopf-op", "--verb=get,list,watch,patch", "--resource=configmaps", "-n", namespace
    )
    control_plane.kubectl(
        "create", "role", "kopf-events", "--verb=create", "--resource=events", "-n", namespace
    )
    for role in ("kopf-op", "kopf-events"):
        control_plane.kubectl(
            "create",
            "rolebinding",
            role,
            f"--role={role}",
            f"--serviceaccount={namespace}:kopf-op",
            "-n",
            namespace,
        )
    # kopf's documented cluster-level needs (it retries for a minute before falling back without them).
    observer = f"{namespace}-kopf-observer"
    control_plane.kubectl(
        "create",
        "clusterrole",
        observer,
        "--verb=list,watch",
        "--resource=namespaces,customresourcedefinitions.apiextensions.k8s.io",
    )
    control_plane.kubectl(
        "create",
        "clusterrolebinding",
        observer,
        f"--clusterrole={observer}",
        f"--serviceaccount={namespace}:kopf-op",
    )
    handlers = tmp_path / "handlers.py"
    handlers.write_text(
        "import kopf\n\n"
        "@kopf.on.create('configmaps', labels={'kopf-test': 'yes'})\n"
        "def mark(body, patch, **_):\n"
        "    patch.metadata.annotations['testbed.interlace.dev/seen'] = body.metadata.name\n"
    )
    env = control_plane.env(control_plane.service_account_kubeconfig(namespace, "kopf-op"))
    log = tmp_path / "kopf.log"
    with open(log, "wb") as out:
        kopf = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "-n",
                namespace,
                "--verbose",
                str(handlers),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        control_plane.kubectl("create", "configmap", "ignored", "-n", namespace)
        control_plane.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "handled", "labels": {"kopf-test": "yes"}},
            },
            namespace=namespace,
        )

        def annotation(name: str) -> str | None:
            obj = control_plane.kubectl_json("get", "configmap", name, "-n", namespace)
            return (obj["metadata"].get("annotations") or {}).get("testbed.interlace.dev/seen")

        def handled() -> bool:
            assert kopf.poll() is None, f"kopf exited:\n{log.read_text()[-3000:]}"
            return annotation("handled") == "handled"

        try:
            control_plane.wait_for(handled, timeout=60, what="the kopf handler to annotate the ConfigMap")
        except TimeoutError as e:
            pytest.fail(f"{e}\nkopf log:\n{log.read_text()[-4000:]}")
        assert annotation("ignored") is None
        assert "Forbidden" not in log.read_text(), log.read_text()[-3000:]
    finally:
        os.killpg(kopf.pid, signal.SIGTERM)
        try:
            kopf.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(kopf.pid, signal.SIGKILL)
            kopf.wait()
        for kind in ("clusterrolebinding", "clusterrole"):
            control_plane.kubectl("delete", kind, observer, "--ignore-not-found", check=False)


# --------------------------------------------------------------------------- teardown


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups / PDEATHSIG on Linux")
def test_component_stop_kills_the_whole_process_group(tmp_path: Path):
    comp = Component(
        "sleeper", ["bash", "-c", f"sleep 300 & echo $! > {tmp_path}/child.pid; wait"], tmp_path / "s.log"
    )
    comp.start()
    child_pid_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 10
    while not child_pid_file.exists() or not child_pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(child_pid_file.read_text())
    assert comp.popen is not None
    comp.stop(timeout=5)
    assert comp.popen.poll() is not None
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the grandchild survived stop()"
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PDEATHSIG is Linux-only")
def test_components_die_with_their_parent(tmp_path: Path):
    """Even if pytest is SIGKILLed (no atexit, no finalizer), the children do not outlive it."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from pathlib import Path\n"
        "from tests.cluster.testbed import Component\n"
        f"c = Component('sleeper', ['sleep', '300'], Path({str(tmp_path / 'c.log')!r}))\n"
        "c.start()\n"
        "print(c.popen.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "child outlived its SIGKILLed parent"
            time.sleep(0.05)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
