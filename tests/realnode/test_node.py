"""The testbed's real node: pods from the project's own images run for real.

What a kwok node cannot show: a container process runs (its exit code and logs come back), a pod
reaches another pod through a ClusterIP Service by its DNS name, a pod reaches the apiserver through
the `kubernetes` Service with its ServiceAccount token, and the fake GPU node beside the real one
takes only pods that tolerate its taint; and the node's kept image store holds the current build of
each image only.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from interlace.schema import podpolicy
from tests.cluster.node import NODE_LABEL, RealNode
from tests.cluster.testbed import FAKE_NODE_TAINT, ControlPlane

pytestmark = [pytest.mark.real_node, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]


def _image_build() -> ModuleType:
    """hack/images/build.py, the code that builds and loads the node's images (not a package)."""
    spec = importlib.util.spec_from_file_location("interlace_image_build", REPO / "hack/images/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _pod(name: str, image: str, command: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}],
            **spec,
        },
    }


def _wait_phase(cp: ControlPlane, ns: str, name: str, phases: tuple[str, ...], timeout: float = 180) -> str:
    def phase() -> str | None:
        p = cp.kubectl_json("get", "pod", name, "-n", ns).get("status", {}).get("phase")
        return p if p in phases else None

    return cp.wait_for(phase, timeout=timeout, interval=1.0, what=f"pod {name} in {phases}")


def test_node_is_ready_real_and_the_fake_gpu_node_is_tainted(real_cluster: tuple[ControlPlane, RealNode]) -> None:
    cp, node = real_cluster
    nodes = {n["metadata"]["name"]: n for n in cp.kubectl_json("get", "nodes")["items"]}
    real = nodes[node.name]
    assert real["metadata"]["labels"][NODE_LABEL[0]] == NODE_LABEL[1]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["addresses"][0]["address"] == cp.node_ip
    fakes = [n for name, n in nodes.items() if name != node.name]
    assert fakes and all(
        any(t["key"] == FAKE_NODE_TAINT for t in n["spec"].get("taints", [])) for n in fakes
    )


def test_a_pod_of_the_runtime_image_runs_python_with_the_project(
    real_cluster: tuple[ControlPlane, RealNode], real_namespace: str
) -> None:
    cp, node = real_cluster
    code = (
        "import interlace.schema.spec, torch, transformers, ray, os; from interlace import builtin; "
        "print('OK', torch.__version__, ray.__version__, builtin.smollm2_dir().is_dir(), os.getuid())"
    )
    cp.create(_pod("py", node.images["runtime"], ["python", "-c", code]), namespace=real_namespace)
    assert _wait_phase(cp, real_namespace, "py", ("Succeeded", "Failed"), timeout=300) == "Succeeded"
    out = cp.kubectl("logs", "py", "-n", real_namespace).stdout
    assert out.startswith("OK 2.14.1") and " True " in out, out
    assert out.split()[-1] == str(podpolicy.RUN_AS_USER), out  # the image's own user, with no securityContext
    pod = cp.kubectl_json("get", "pod", "py", "-n", real_namespace)
    assert pod["spec"]["nodeName"] == node.name


@pytest.mark.pod_security("restricted")
def test_the_runtime_image_works_as_the_operators_restricted_pods_run_it(
    real_cluster: tuple[ControlPlane, RealNode], real_namespace: str
) -> None:
    """The securityContexts the operator writes on every Ray pod (podpolicy), in a namespace that
    enforces Pod Security restricted: the user has a name, HOME, the interlace cache and /tmp are
    writable, and the embedded default's data (builtin:english, builtin:python-docs) and model are
    prebuilt in the image (nothing to build in the pod)."""
    cp, node = real_cluster
    code = (
        "import os, getpass, pathlib, tempfile\n"
        "from interlace import builtin\n"
        "data = builtin.cache_dir() / 'data'\n"
        "before = sorted(p.name for p in data.iterdir())\n"
        "built = [builtin.python_docs_dir(), builtin.english_dir('english'), builtin.smollm2_dir()]\n"
        "after = sorted(p.name for p in data.iterdir())\n"
        "for d in (pathlib.Path.home(), builtin.cache_dir(), pathlib.Path(tempfile.gettempdir()), pathlib.Path.cwd()):\n"
        "    (d / 'probe').write_text('ok')\n"
        "print('ID', os.getuid(), os.getgid(), getpass.getuser(), os.environ['HOME'], os.getcwd())\n"
        "print('PREBUILT', before == after, all(p.is_dir() for p in built), before)\n"
    )
    pod = _pod("restricted", node.images["runtime"], ["python", "-c", code],
               securityContext=podpolicy.merged(podpolicy.POD_SECURITY_CONTEXT, None))
    pod["spec"]["containers"][0]["securityContext"] = podpolicy.merged(podpolicy.CONTAINER_SECURITY_CONTEXT, None)
    cp.create(pod, namespace=real_namespace)
    phase = _wait_phase(cp, real_namespace, "restricted", ("Succeeded", "Failed"), timeout=300)
    out = cp.kubectl("logs", "restricted", "-n", real_namespace).stdout
    assert phase == "Succeeded", out
    assert f"ID {podpolicy.RUN_AS_USER} {podpolicy.RUN_AS_GROUP} ray /home/ray /home/ray" in out, out
    assert "PREBUILT True True" in out, out


def test_service_dns_and_the_apiserver_are_reachable_from_a_pod(
    real_cluster: tuple[ControlPlane, RealNode], real_namespace: str
) -> None:
    cp, node = real_cluster
    ns = real_namespace
    image = node.images["runtime"]
    server = _pod("web", image, ["python", "-m", "http.server", "8000"])
    server["spec"]["restartPolicy"] = "Always"
    server["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8000}, "periodSeconds": 1}
    cp.create(server, namespace=ns)
    cp.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8000}]}}, namespace=ns)
    # Ready (listening) and an endpoint of the Service before the client asks.
    cp.kubectl("wait", "--for=condition=Ready", "pod/web", "-n", ns, "--timeout=180s", timeout=190)
    cp.wait_for(
        lambda: any(e.get("conditions", {}).get("ready") for sl in cp.kubectl_json(
            "get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web")["items"]
            for e in sl.get("endpoints") or []),
        timeout=60, what="the web Service's endpoint",
    )
    # The client: the Service by its DNS name, then the apiserver with the pod's own token.
    client = (
        "import urllib.request, ssl, socket, json, time\n"
        f"print('dns', socket.gethostbyname('web.{ns}.svc.cluster.local'))\n"
        # kube-proxy programs the new endpoint a moment after it exists (a REJECT rule until then).
        "for i in range(60):\n"
        "    try:\n"
        f"        print('web', urllib.request.urlopen('http://web.{ns}/', timeout=5).status, 'after', i); break\n"
        "    except OSError:\n"
        "        time.sleep(1)\n"
        "tok = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()\n"
        "ctx = ssl.create_default_context(cafile='/var/run/secrets/kubernetes.io/serviceaccount/ca.crt')\n"
        "req = urllib.request.Request('https://kubernetes.default.svc/version', headers={'Authorization': 'Bearer ' + tok})\n"
        "print('api', json.load(urllib.request.urlopen(req, context=ctx, timeout=20))['gitVersion'])\n"
    )
    cp.create(_pod("client", image, ["python", "-c", client]), namespace=ns)
    phase = _wait_phase(cp, ns, "client", ("Succeeded", "Failed"))
    logs = cp.kubectl("logs", "client", "-n", ns).stdout
    assert phase == "Succeeded", logs
    svc_ip = cp.kubectl_json("get", "service", "web", "-n", ns)["spec"]["clusterIP"]
    assert f"dns {svc_ip}" in logs and "web 200" in logs and "api v1." in logs, logs


def test_pods_avoid_the_fake_gpu_node_unless_they_tolerate_it(
    real_cluster: tuple[ControlPlane, RealNode], real_namespace: str
) -> None:
    cp, node = real_cluster
    gpu = _pod("gpu", node.images["pause"], ["/pause"])
    gpu["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    cp.create(gpu, namespace=real_namespace)
    tolerating = _pod("tolerating", node.images["pause"], ["/pause"],
                      tolerations=[{"key": FAKE_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}])
    tolerating["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    cp.create(tolerating, namespace=real_namespace)

    def scheduled() -> dict[str, Any] | None:
        pods = {p["metadata"]["name"]: p for p in cp.kubectl_json("get", "pods", "-n", real_namespace)["items"]}
        unsched = [c for c in pods["gpu"].get("status", {}).get("conditions", [])
                   if c["type"] == "PodScheduled" and c["status"] == "False"]
        return pods if unsched and pods["tolerating"]["spec"].get("nodeName") else None

    pods = cp.wait_for(scheduled, timeout=60, what="scheduling decisions")
    assert pods["tolerating"]["spec"]["nodeName"] != node.name
    assert "taint" in pods["gpu"]["status"]["conditions"][0]["message"] or "untolerated" in str(pods["gpu"]["status"])


def test_the_nodes_store_keeps_only_the_current_build_of_each_image(real_cluster: tuple[ControlPlane, RealNode]) -> None:
    """An older build leaves the kept store under every name it has. Besides its tag, containerd's
    CRI plugin names each imported image `sha256:<config digest>`; removing only the tag left eight
    older runtime builds (7.7 GB each) in the store until the disk was full and the kubelet evicted
    every image, pause included (CI of the fifth session). Here an older build of pause is imported
    beside the current one, as a code change would, and the loader's prune must leave no name of it
    and every current image in place."""
    cp, node = real_cluster
    build = _image_build()
    sock = str(node.sock)
    config = {"Entrypoint": ["/pause"], "User": "65535:65535", "Labels": {"interlace.dev/test": "older-build"}}
    with tempfile.TemporaryDirectory() as d:
        older, digest = build.oci_layout("pause", [build.pause_layer()], config, Path(d))
        build.load(sock, Path(d), older)
    assert older != node.images["pause"]

    def cri_name() -> list[str] | None:
        names = [n for n, target in build.ctr_images(sock).items() if target == digest and n.startswith("sha256:")]
        return names or None

    ids = cp.wait_for(cri_name, timeout=30, interval=0.2, what="the CRI plugin's sha256: name of the older build")
    removed = build.prune(sock, {"pause": node.images["pause"]})
    after = build.ctr_images(sock)
    assert older in removed and set(ids) <= set(removed), removed
    assert digest not in after.values(), {n: t for n, t in after.items() if t == digest}
    assert all(ref in after for ref in node.images.values()), (node.images, sorted(after))
