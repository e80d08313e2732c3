"""The product on real pods: `helm install` of the chart with the operator image this repo builds, then a
PruneJob of the embedded default on a Ray head and two Ray worker pods, its work files on a
PersistentVolume, publishing the pruned model to an S3-compatible server that runs as a pod, with
credentials from a Secret that never show up anywhere else. The namespace enforces Pod Security
"restricted": every pod in it (the Ray head and workers, KubeRay's submitter, the S3 server) runs as a
non-root uid with no capabilities, no privilege escalation and the runtime's seccomp profile.

One PruneJob covers the end-to-end path, S3 publishing and the faults a real cluster has (the operator
pod deleted, a worker pod killed mid-finetune, the head pod killed): they were three, then two runs of
the same job, and CI's time is now spent once.

Nothing in this module moves a status by hand: the operator runs as a pod (its probes, its
ServiceAccount, the chart's read-only root filesystem), KubeRay creates the Ray cluster, `interlace
run` runs as the RayJob's driver on the head, Ray Train's workers are the worker pods, and every
status field the test reads was written by the operator or by the job's reporter.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from interlace.schema import podpolicy
from tests.cluster.node import RealNode
from tests.cluster.testbed import REPO_ROOT, ControlPlane, read_versions

pytestmark = [pytest.mark.real_node, pytest.mark.cluster, pytest.mark.slow, pytest.mark.pod_security("restricted")]

CHART = REPO_ROOT / "charts" / "interlace-operator"
RELEASE = "interlace"
OPERATOR_NS = "interlace-system"

ACCESS_KEY = "AKIAREALNODEPLANT7Q2X"
SECRET_KEY = "realnode/Planted+Secret/x9QmZ7t3LkVw0PqR5sYbQ"


def _image_args(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


@pytest.fixture(scope="module")
def operator_release(real_cluster: tuple[ControlPlane, RealNode]) -> Iterator[dict[str, str]]:
    """The chart installed with the images built by hack/images/build.py; uninstalled afterwards."""
    cp, node = real_cluster
    op_repo, op_tag = _image_args(node.images["operator"])
    rt_repo, rt_tag = _image_args(node.images["runtime"])
    t0 = time.monotonic()
    cp.helm(
        "install", RELEASE, str(CHART), "-n", OPERATOR_NS, "--create-namespace",
        "--set", f"image.repository={op_repo}", "--set", f"image.tag={op_tag}",
        "--set", "image.pullPolicy=Never",
        "--set", f"runtimeImage.repository={rt_repo}", "--set", f"runtimeImage.tag={rt_tag}",
        "--wait", "--timeout", "5m",
        timeout=330,
    )
    installed = time.monotonic() - t0
    yield {"namespace": OPERATOR_NS, "installed_s": f"{installed:.1f}"}
    if cp.running:
        cp.helm("uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", "--timeout", "2m", check=False, timeout=150)


def _operator_pod(cp: ControlPlane) -> dict[str, Any]:
    pods = cp.kubectl_json(
        "get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert running, [p["status"] for p in pods]
    return running[0]


def test_helm_install_runs_the_operator_pod_with_probes_and_metrics(
    real_cluster: tuple[ControlPlane, RealNode], operator_release: dict[str, str]
) -> None:
    cp, node = real_cluster
    pod = _operator_pod(cp)
    assert pod["spec"]["nodeName"] == node.name
    assert pod["spec"]["containers"][0]["image"] == node.images["operator"]
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"  # the readiness probe (kopf's /healthz) passed
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and pod["spec"]["securityContext"]["runAsNonRoot"] is True
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and status["ready"] is True
    # The process really runs as 65532 on a read-only root: ask it.
    out = cp.kubectl(
        "exec", "-n", OPERATOR_NS, pod["metadata"]["name"], "--", "python", "-c",
        "import os; open('/tmp/x', 'w').write('ok'); print(os.getuid());\n"
        "try:\n open('/etc/x', 'w')\nexcept OSError as e:\n print('ro', e.errno)",
    ).stdout.split()
    assert out == ["65532", "ro", "30"], out  # 30 = EROFS
    # Metrics through the chart's Service (the apiserver's service proxy: no port-forward needed).
    svcs = cp.kubectl_json("get", "services", "-n", OPERATOR_NS)["items"]
    metrics_svc = next(s for s in svcs if any(p.get("name") == "metrics" for p in s["spec"]["ports"]))
    name = metrics_svc["metadata"]["name"]
    text = cp.wait_for(
        lambda: cp.kubectl("get", "--raw", f"/api/v1/namespaces/{OPERATOR_NS}/services/http:{name}:metrics/proxy/metrics",
                           check=False).stdout,
        timeout=60, what="the operator's metrics through its Service",
    )
    assert "interlace_" in text and "python_info" in text, text[:2000]


def _pv(name: str, path: Path, size: str = "20Gi") -> dict[str, Any]:
    """A hostPath PersistentVolume at `path`, which is made here owned by the uid the operator runs the
    Ray pods as (kubelet's DirectoryOrCreate would make it root's, 0755: the job could not write)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, podpolicy.RUN_AS_USER, podpolicy.RUN_AS_GROUP)
    path.chmod(0o775)
    return {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
        },
    }


def _pvc(name: str, volume: str, size: str = "20Gi") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                 "resources": {"requests": {"storage": size}}},
    }


def embedded_default_job(name: str, claim: str, *, steps: int = 4) -> dict[str, Any]:
    """examples/prunejob-local.yaml, smaller, on 2 worker pods, published to the claim."""
    doc = yaml.safe_load((REPO_ROOT / "examples" / "prunejob-local.yaml").read_text())
    spec = doc["spec"]
    spec["calibration"].update(numSamples=16, batchSize=8)
    spec["calibration"]["data"]["maxSamples"] = 16
    spec["finetune"].update(maxSteps=steps, checkpointEverySteps=1, perDeviceBatchSize=2,
                            gradientAccumulationSteps=1)
    spec["finetune"]["data"]["maxSamples"] = 256
    spec["evaluation"].update(maxSamples=16)
    spec["evaluation"]["data"]["maxSamples"] = 16
    spec["evaluation"]["outOfDomainData"]["maxSamples"] = 16
    spec["output"] = {"uri": f"pvc://{claim}/{name}"}
    # The node has 2 cores: requests must fit beside CoreDNS and the operator.
    spec["resources"] = {
        "workers": 2, "gpusPerWorker": 0, "cpu": "500m", "memory": "3Gi",
        "headCpu": "600m", "headMemory": "5Gi", "pvcName": claim,
    }
    spec["ttlSecondsAfterFinished"] = 30
    return {"apiVersion": doc["apiVersion"], "kind": "PruneJob", "metadata": {"name": name}, "spec": spec}


def _status(cp: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    return cp.kubectl_json("get", "prunejob", name, "-n", ns).get("status", {})


def _s3_server(cp: ControlPlane, node: RealNode, ns: str, secret: str) -> Any:
    """moto's S3 server in its own pod behind a Service, a bucket `models`, and the Secret a PruneJob
    names in spec.output.s3Secret. Returns a boto3 client the test reaches the pod with (the node's
    pod network, cni0 on this machine)."""
    cp.create({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "s3"},
        "spec": {"selector": {"matchLabels": {"app": "s3"}}, "template": {
            "metadata": {"labels": {"app": "s3"}},
            # Pod Security restricted, as the namespace enforces (the image's user is 65532).
            "spec": {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "s3", "image": node.images["s3"], "imagePullPolicy": "Never",
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}},
                                     "ports": [{"containerPort": 5000}],
                                     "readinessProbe": {"tcpSocket": {"port": 5000}, "periodSeconds": 2},
                                     "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}}]}}},
    }, namespace=ns)
    cp.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s3"},
               "spec": {"selector": {"app": "s3"}, "ports": [{"port": 5000}]}}, namespace=ns)
    cp.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "type": "Opaque",
               "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                              "AWS_ENDPOINT_URL": f"http://s3.{ns}.svc.cluster.local:5000",
                              "AWS_REGION": "us-east-1"}}, namespace=ns)
    cp.kubectl("rollout", "status", "deploy/s3", "-n", ns, "--timeout=180s", timeout=190)
    pod_ip = cp.kubectl_json("get", "pods", "-n", ns, "-l", "app=s3")["items"][0]["status"]["podIP"]
    s3 = boto3.client("s3", endpoint_url=f"http://{pod_ip}:5000", aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    return s3


def _ray_pods(cp: ControlPlane, ns: str, node_type: str) -> list[dict[str, Any]]:
    pods = cp.kubectl_json("get", "pods", "-n", ns, "-l", f"ray.io/node-type={node_type}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def _dashboard(ip: str, method: str, path: str, token: str | None = None, body: bytes | None = None) -> int:
    """The HTTP status of one request to a Ray head's dashboard / job API (8265)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{ip}:8265{path}", data=body, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _probe_ray_auth(cp: ControlPlane, ns: str) -> dict[str, int] | None:
    """Ray's token authentication on the live head, from outside its pods: the job API refuses a
    listing and a submission without the token (401) or with a wrong one (403), and serves the
    listing with the token KubeRay put in the RayCluster's Secret (so the refusal is the token's, not an unreachable port). None while the
    head is not serving yet."""
    heads = _ray_pods(cp, ns, "head")
    if not heads or not heads[0]["status"].get("podIP"):
        return None
    ip, cluster = heads[0]["status"]["podIP"], heads[0]["metadata"]["labels"]["ray.io/cluster"]
    secret = cp.kubectl_json("get", "secret", "-n", ns, cluster)
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    submission = json.dumps({"entrypoint": "python -c 'print(1)'"}).encode()
    try:
        return {
            "list without token": _dashboard(ip, "GET", "/api/jobs/"),
            "submit without token": _dashboard(ip, "POST", "/api/jobs/", body=submission),
            "submit with a wrong token": _dashboard(ip, "POST", "/api/jobs/", token="not-" + token, body=submission),
            "list with the token": _dashboard(ip, "GET", "/api/jobs/", token=token),
        }
    except OSError:  # the dashboard is not listening yet
        return None


# Connects to each host:port given (in parallel, 3 s each) and prints "<target> open" or the error's name.
_REACH = (
    "import socket, sys, concurrent.futures as cf\n"
    "def reach(target):\n"
    "    host, port = target.rsplit(':', 1)\n"
    "    try:\n"
    "        socket.create_connection((host, int(port)), timeout=3).close()\n"
    "        return 'open'\n"
    "    except OSError as e:\n"
    "        return type(e).__name__\n"
    "for t, r in zip(sys.argv[1:], cf.ThreadPoolExecutor(8).map(reach, sys.argv[1:])):\n"
    "    print(t, r)\n"
)
RAY_PORTS = (6379, 8265, 10001)  # the GCS, the dashboard and job API, the Ray client server


def _prober(cp: ControlPlane, node: RealNode, ns: str, name: str) -> None:
    """A pod that only waits, to connect from (Pod Security restricted, as the job's namespace enforces)."""
    cp.create({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"securityContext": podpolicy.merged(podpolicy.POD_SECURITY_CONTEXT, None),
                 "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": node.images["runtime"], "imagePullPolicy": "Never",
                                 "command": ["python", "-c", "import time; time.sleep(86400)"],
                                 "securityContext": podpolicy.merged(podpolicy.CONTAINER_SECURITY_CONTEXT, None),
                                 "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}]},
    }, namespace=ns)


def _reach_from(cp: ControlPlane, ns: str, pod: str | None, targets: list[str]) -> dict[str, str]:
    """What `pod` (None: this machine, the node itself) can connect to."""
    if pod is None:
        out = subprocess.run([sys.executable, "-c", _REACH, *targets], capture_output=True, text=True,
                             timeout=30).stdout
    else:
        out = cp.kubectl("exec", pod, "-n", ns, "--", "python", "-c", _REACH, *targets, timeout=60).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _probe_ray_network(cp: ControlPlane, ns: str, others: list[tuple[str, str]], control: str) -> dict[str, Any] | None:
    """The job's NetworkPolicy on the live head: from each (namespace, pod) in `others` (pods that are
    not the job's), the head's RAY_PORTS and, as the control that the prober's network works, `control`
    (a pod no policy selects); from the node itself the head's ports (they listen). None while the
    head has no IP yet."""
    heads = _ray_pods(cp, ns, "head")
    if not heads or not heads[0]["status"].get("podIP"):
        return None
    ip = heads[0]["status"]["podIP"]
    targets = [f"{ip}:{port}" for port in RAY_PORTS]
    node = _reach_from(cp, ns, None, targets)
    if any(r != "open" for r in node.values()):
        return None  # the head is not listening on every port yet
    seen: dict[str, Any] = {"node": {t.rsplit(":", 1)[1]: r for t, r in node.items()}}
    for other_ns, pod in others:
        got = _reach_from(cp, other_ns, pod, [*targets, control])
        seen[f"{other_ns}/{pod}"] = {("control" if t == control else t.rsplit(":", 1)[1]): r for t, r in got.items()}
    return seen


def _newest_checkpoint(work_root: Path) -> dict[str, Any]:
    """The training's own record on the shared volume (a checkpoint every step), read directly: the
    status shows progress at most every 10 s, and on a quiet machine all the steps between two faults
    can pass inside one such window (a status-driven trigger once missed them all)."""
    newest: dict[str, Any] = {"step": 0, "attempt_starts": []}
    for path in work_root.glob("*/checkpoints/**/state.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):  # being written or pruned right now
            continue
        if state["step"] > newest["step"]:
            newest = state
    return newest


# Up to three attempts' worth of Ray clusters on a 2-core node, then scoring and publishing: the
# suite's 900 s default is too short on a slow day; the wait below is 2400 s, this bounds the test.
@pytest.mark.timeout(2700)
def test_a_prunejob_naming_a_missing_secret_fails_at_its_start_deadline_naming_it_and_frees_its_pods(
    real_cluster: tuple[ControlPlane, RealNode], operator_release: dict[str, str], real_namespace: str,
) -> None:
    """The kubelet cannot start the Ray containers (their HF_TOKEN comes from a Secret that does not
    exist): while it waits the PruneJob's status says so, and at spec.startDeadlineSeconds after
    KubeRay started the Ray cluster the PruneJob fails for good (StartDeadlineExceeded, one attempt)
    naming the Secret, and its RayJob, Ray cluster and pods are deleted."""
    cp, _ = real_cluster
    ns = real_namespace
    cp.apply([_pv(f"pv-{ns}", cp.workdir / "volumes" / ns)])
    cp.create(_pvc("work", f"pv-{ns}"), namespace=ns)
    job = embedded_default_job("nosecret", "work", steps=1)
    job["spec"]["model"]["hfTokenSecret"] = "no-such-token"
    deadline = 30
    job["spec"]["startDeadlineSeconds"] = deadline
    cp.create(job, namespace=ns)
    said_while_waiting: list[str] = []

    def failed() -> dict[str, Any] | None:
        st = _status(cp, ns, "nosecret")
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        if st.get("phase") == "Pending" and "no-such-token" in ready.get("message", ""):
            said_while_waiting.append(ready["message"])
        return st if st.get("phase") in ("Failed", "Succeeded") else None

    st = cp.wait_for(failed, timeout=240, interval=2.0, what="PruneJob nosecret failed")
    cond = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert st["phase"] == "Failed" and cond["reason"] == "StartDeadlineExceeded", st
    assert 'secret "no-such-token" not found' in cond["message"], cond["message"]
    assert st["attempts"] == 1, st  # not retried: a retry would wait on the same Secret
    assert said_while_waiting, "the Pending status never named the missing Secret"
    started = datetime.fromisoformat(st["rayJob"]["startTime"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(st["completionTime"].replace("Z", "+00:00"))
    assert deadline <= (ended - started).total_seconds() <= deadline + 20, (started, ended)

    def released() -> bool:
        left = [*cp.kubectl_json("get", "rayjobs", "-n", ns)["items"],
                *cp.kubectl_json("get", "rayclusters", "-n", ns)["items"],
                *cp.kubectl_json("get", "pods", "-n", ns, "-l", "ray.io/is-ray-node=yes")["items"]]
        return not left

    cp.wait_for(released, timeout=120, interval=2.0, what="the failed attempt's RayJob, Ray cluster and pods deleted")


def test_prunejob_of_the_embedded_default_survives_operator_worker_and_head_faults_and_publishes_to_s3(
    real_cluster: tuple[ControlPlane, RealNode], operator_release: dict[str, str], real_namespace: str,
    tmp_path: Path,
) -> None:
    """One run of the embedded default (SmolLM2-135M) on a head and two worker pods, publishing to S3,
    with the three faults a bad day brings, in order:
    1. the operator pod is deleted while the job analyses (its Deployment brings a new one);
    2. a worker pod is killed mid-finetune: Ray Train restarts the worker group, which resumes from the
       newest checkpoint on the shared volume (the step counter does not go back to 0);
    3. the head pod is killed: the driver dies with it. Either KubeRay's submitter re-submits the job
       to the new head, or the attempt fails and the operator starts the next one (a new RayJob);
       both reuse plan.json and resume from the checkpoints on the shared volume.
    While it analyses, the head's job API is probed from outside its pods: Ray's token authentication
    refuses a listing or a submission without the token KubeRay generated; and the job's NetworkPolicy
    (enforced by kube-router on the node) keeps a pod of another namespace, and a pod of the same
    namespace that is not the job's, from connecting to the head's GCS, job API and client ports, while
    the node itself (kubelet, the apiserver's proxy that KubeRay uses) and the job's own pods connect. The PruneJob still
    succeeds, with exactly one RayJob per attempt and never two Ray clusters at once, no (re)start
    of the training after the first began at step 0, and the model it publishes to the bucket is
    the one it scored. (These were two runs of the same job, one clean and one with
    faults; CI's time is now spent once.)"""
    cp, node = real_cluster
    ns = real_namespace
    # Pods that are not the job's, to connect from: one in another tenant's namespace, one in the job's.
    tenant = cp.create_namespace(prefix="other-tenant")
    _prober(cp, node, tenant, "prober")
    _prober(cp, node, ns, "neighbour")
    s3 = _s3_server(cp, node, ns, "s3-creds")
    s3_ip = cp.kubectl_json("get", "pods", "-n", ns, "-l", "app=s3")["items"][0]["status"]["podIP"]
    volume_dir = cp.workdir / "volumes" / ns
    cp.apply([_pv(f"pv-{ns}", volume_dir)])
    cp.create(_pvc("work", f"pv-{ns}"), namespace=ns)
    steps = 10
    job = embedded_default_job("smollm2", "work", steps=steps)
    job["spec"]["output"] = {"uri": "s3://models/smollm2-20", "s3Secret": "s3-creds"}
    job["spec"]["backoffLimit"] = 2
    job["spec"]["finetune"]["maxFailures"] = 3
    cp.create(job, namespace=ns)
    work_root = volume_dir / ".interlace-work"

    # Watched at every poll: the Ray pods (all on the real node), and never two Ray clusters of this
    # PruneJob at once (a failed attempt's RayJob, RayCluster and pods are gone before the next exists).
    seen: dict[str, dict[str, Any]] = {}
    clusters_seen: list[list[str]] = []
    done: list[str] = []

    every_pod: dict[str, dict[str, Any]] = {}  # and KubeRay's submitter, the S3 server

    def observe() -> None:
        pods = []
        for p in cp.kubectl_json("get", "pods", "-n", ns)["items"]:
            every_pod[p["metadata"]["name"]] = p
            if p["metadata"].get("labels", {}).get("ray.io/is-ray-node") == "yes":
                seen[p["metadata"]["name"]] = p
                pods.append(p)
        names = {c["metadata"]["name"] for c in cp.kubectl_json("get", "rayclusters", "-n", ns)["items"]}
        names |= {p["metadata"]["labels"]["ray.io/cluster"] for p in pods}
        if len(names) > 1 or not clusters_seen or clusters_seen[-1] != sorted(names):
            clusters_seen.append(sorted(names))

    auth: dict[str, int] = {}
    reach: dict[str, Any] = {}

    def inject(st: dict[str, Any]) -> None:
        if not auth and st.get("stage") in ("Analyzing", "Planning", "Finetuning"):
            auth.update(_probe_ray_auth(cp, ns) or {})
        if not reach and st.get("stage") in ("Analyzing", "Planning", "Finetuning"):
            reach.update(_probe_ray_network(cp, ns, [(tenant, "prober"), (ns, "neighbour")], f"{s3_ip}:5000") or {})
        if "operator" not in done and st.get("stage") in ("Analyzing", "Planning", "Finetuning"):
            op = cp.kubectl_json("get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/component=operator")
            cp.kubectl("delete", "pod", "-n", OPERATOR_NS, op["items"][0]["metadata"]["name"], "--wait=false")
            done.append("operator")
            return
        if "operator" not in done or "head" in done:
            return
        ckpt = _newest_checkpoint(work_root)
        starts = ckpt["attempt_starts"]
        if "worker" not in done and ckpt["step"] >= 3 and len(starts) == 1:
            workers = _ray_pods(cp, ns, "worker")
            if workers:
                cp.kubectl("delete", "pod", "-n", ns, workers[0]["metadata"]["name"], "--grace-period=0", "--force")
                done.extend(["worker", f"worker-after-{ckpt['step']}"])
        elif "worker" in done and len(starts) >= 2 and ckpt["step"] < steps:
            # The restarted worker group has saved a step of its own, and steps are left to train.
            heads = _ray_pods(cp, ns, "head")
            if heads:
                cp.kubectl("delete", "pod", "-n", ns, heads[0]["metadata"]["name"], "--grace-period=0", "--force")
                done.extend(["head", f"head-after-{ckpt['step']}"])

    def finished() -> dict[str, Any] | None:
        observe()
        st = _status(cp, ns, "smollm2")
        inject(st)
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    t0 = time.monotonic()
    try:
        st = cp.wait_for(finished, timeout=2400, interval=3.0, what="PruneJob smollm2 finished")
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_diagnose(cp, ns)}") from None
    assert st["phase"] == "Succeeded", f"{json.dumps(st, indent=1)[:4000]}\n{_diagnose(cp, ns)}"
    wall = time.monotonic() - t0
    # What a user runs: kubectl wait returns at once now.
    cp.kubectl("wait", "--for=condition=Succeeded", "prunejob/smollm2", "-n", ns, "--timeout=10s")

    # on the newest KubeRay the module proxy serves (the operator's cluster tests run KUBERAY_VERSION)
    assert f"kuberay-{read_versions()['KUBERAY_NEWEST_VERSION']}" in str(cp.binaries.ray_operator)
    # Ray's token authentication held on the live head: no listing or submission without the token.
    assert auth == {"list without token": 401, "submit without token": 401, "submit with a wrong token": 403,
                    "list with the token": 200}, auth
    # The job's NetworkPolicy held on the live head: the node reaches its ports (they listen); the
    # other tenant's pod and the job's neighbour reach none of them, and reach an unguarded pod.
    ports = [str(p) for p in RAY_PORTS]
    assert reach.get("node") == dict.fromkeys(ports, "open"), reach
    for who in (f"{tenant}/prober", f"{ns}/neighbour"):
        assert reach[who]["control"] == "open", reach
        assert all(reach[who][p] != "open" for p in ports), reach
    policy = cp.kubectl_json("get", "networkpolicy", "smollm2-ray", "-n", ns)
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "PruneJob", policy["metadata"]
    # The faults happened, in order, and the attempts stayed apart.
    assert {"operator", "worker", "head"} <= set(done), done
    assert all(len(names) <= 1 for names in clusters_seen), clusters_seen
    rayjobs = sorted(r["metadata"]["name"] for r in cp.kubectl_json("get", "rayjobs", "-n", ns)["items"])
    # One RayJob per attempt, named by the attempt (finished ones may already be collected).
    expected = {f"smollm2-{i}" for i in range(1, st["attempts"] + 1)}
    assert f"smollm2-{st['attempts']}" in rayjobs and set(rayjobs) <= expected, (rayjobs, st["attempts"])
    # Each Ray cluster was a head and two workers, all on the real node.
    by_cluster: dict[str, list[str]] = {}
    for p in seen.values():
        by_cluster.setdefault(p["metadata"]["labels"]["ray.io/cluster"], []).append(
            p["metadata"]["labels"].get("ray.io/node-type", "?"))
    assert all(p["spec"].get("nodeName") == node.name for p in seen.values())
    assert by_cluster and all(roles.count("worker") >= 2 for roles in by_cluster.values()), by_cluster
    assert sum(roles.count("head") for roles in by_cluster.values()) >= 2, by_cluster  # the killed one and its heir
    # Pod Security restricted, enforced by the namespace (the apiserver admitted every pod): the Ray
    # pods and the submitter run as the runtime image's uid, every container (KubeRay's wait-gcs-ready
    # init container included) without privilege escalation or capabilities.
    labels = cp.kubectl_json("get", "namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
    submitters = [p for p in every_pod.values()
                  if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "submitter"]
    assert submitters, sorted(every_pod)
    for p in [*seen.values(), *submitters]:
        psc = p["spec"]["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == podpolicy.RUN_AS_USER, (p["metadata"]["name"], psc)
    for p in every_pod.values():
        for c in [*p["spec"].get("initContainers", []), *p["spec"]["containers"]]:
            sc = c.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False and sc["capabilities"]["drop"] == ["ALL"], (
                p["metadata"]["name"], c["name"], sc)

    plan, results = st["plan"], st["results"]
    assert plan["numLayers"] == 30 and len(plan["drop"]) == 6 and len(plan["finetune"]) >= 1
    assert results["layersBefore"] == 30 and results["layersAfter"] == 24
    assert st["stage"] in ("Publishing", "Succeeded"), st["stage"]  # the job's reporter wrote the last stage
    ppl = {b["name"]: b for b in results["benchmarks"]}
    # the embedded default scores out of domain (builtin:python-docs, the headline) and in domain
    assert ppl["perplexity (out of domain)"]["pruned"] > 0 and ppl["perplexity (in domain)"]["pruned"] > 0
    assert results["relativePerformance"] == pytest.approx(results["retentionOutOfDomain"])
    assert results["outputUri"].startswith("s3://models/smollm2-20")

    # The model is in the bucket.
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="smollm2-20/").get("Contents", [])}
    assert {"smollm2-20/model/config.json", "smollm2-20/model/model.safetensors",
            "smollm2-20/model/README.md"} <= keys, keys

    # The work files are on the claim every Ray pod mounts (INTERLACE_WORK_DIR, the host path behind
    # the PV), one work directory for all attempts: plan, scores, checkpoints, the driver's event log.
    work = [p.parent for p in work_root.glob("*/plan.json")]
    assert len(work) == 1, list(work_root.rglob("*"))[:20]
    out = work[0]
    assert json.loads((out / "plan.json").read_text())["drop"] == plan["drop"]
    assert (out / "results.json").is_file()
    # The checkpoints tell how the training went: Ray Train ran one worker per worker pod under DDP,
    # each (re)start of the worker group began where the newest checkpoint was, never at 0 after the
    # first, and the last step's checkpoint is shared.
    states = [json.loads(p.read_text()) for p in (out / "checkpoints").rglob("state.json")]
    assert states, list((out / "checkpoints").rglob("*"))[:20]
    last = max(states, key=lambda s: s["step"])
    assert last["step"] == steps and last["world_size"] == 2 and last["wrapping"] == "ddp", last
    starts = last["attempt_starts"]
    assert starts[0] == 0 and len(starts) >= 3 and all(s > 0 for s in starts[1:]), (starts, done)
    # The driver's event log: every stage, and finetuning progress up to the last step.
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    stages = [e["data"]["stage"] for e in events if e["event"] == "stage"]
    assert stages[:2] == ["Analyzing", "Planning"] and "Finetuning" in stages and "Evaluating" in stages, stages
    assert any(e["event"] == "progress" and e["data"].get("step") == steps and e["data"].get("totalSteps") == steps
               for e in events), events[-5:]

    # Nothing secret anywhere a user or another tenant can read: status, events, ConfigMaps, logs.
    where = {
        "prunejob": json.dumps(cp.kubectl_json("get", "prunejob", "smollm2", "-n", ns)),
        "events": cp.kubectl("get", "events", "-n", ns, "-o", "json").stdout,
        "configmaps": cp.kubectl("get", "configmaps", "-n", ns, "-o", "json").stdout,
        "rayjobs": cp.kubectl("get", "rayjobs", "-n", ns, "-o", "json").stdout,
        "operator log": "".join(cp.kubectl("logs", p["metadata"]["name"], "-n", OPERATOR_NS, check=False).stdout
                                for p in cp.kubectl_json("get", "pods", "-n", OPERATOR_NS)["items"]),
        "job logs": "".join(cp.kubectl("logs", p["metadata"]["name"], "-n", ns, "--all-containers", check=False).stdout
                            for p in cp.kubectl_json("get", "pods", "-n", ns)["items"]),
    }
    b64 = base64.b64encode(SECRET_KEY.encode()).decode()
    for name, text in where.items():
        assert SECRET_KEY not in text and b64 not in text, f"the secret key leaked into {name}"
        assert ACCESS_KEY not in text, f"the access key id leaked into {name}"

    # The published model, downloaded from the bucket, loads with transformers in a fresh process and
    # its perplexity matches the one the job reported.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for key in keys:
        if key.startswith("smollm2-20/model/") and key.count("/") == 2:
            s3.download_file("models", key, str(model_dir / key.rsplit("/", 1)[1]))
    code = f"""
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from interlace.stages.evaluate import heldout_samples, perplexity
from interlace.schema.spec import load_prunejob
job = load_prunejob(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r})
tok = AutoTokenizer.from_pretrained({str(model_dir)!r})
assert model.config.num_hidden_layers == 24, model.config.num_hidden_layers
samples = heldout_samples(job.spec.evaluation, finetune_data=job.spec.finetune.data)
print(json.dumps({{"ppl": perplexity(model, tok, samples, batch_size=job.spec.evaluation.batch_size, max_length=job.spec.finetune.max_length)}}))
"""
    spec_file = cp.workdir / f"{ns}-job.yaml"
    spec_file.write_text(yaml.safe_dump(job))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, str(spec_file)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["ppl"]
    assert measured == pytest.approx(ppl["perplexity (in domain)"]["pruned"], rel=1e-3)
    cp.delete_namespace(tenant)
    print(f"real-pod PruneJob with three faults: {wall:.0f} s from apply to Succeeded, {st['attempts']} "
          f"attempt(s), faults {done}; operator installed in {operator_release['installed_s']} s")


def _diagnose(cp: ControlPlane, ns: str) -> str:
    parts = []
    for args in (("get", "prunejob,rayjob,raycluster,pods", "-n", ns, "-o", "wide"),
                 ("get", "events", "-n", ns, "--sort-by=.lastTimestamp")):
        parts.append(cp.kubectl(*args, check=False).stdout[-4000:])
    for p in cp.kubectl_json("get", "pods", "-n", ns)["items"]:
        name = p["metadata"]["name"]
        parts.append(f"--- logs {name}\n" + cp.kubectl("logs", name, "-n", ns, "--tail=60", "--all-containers",
                                                       check=False).stdout[-6000:])
    for p in cp.kubectl_json("get", "pods", "-n", OPERATOR_NS)["items"]:
        parts.append("--- operator\n" + cp.kubectl("logs", p["metadata"]["name"], "-n", OPERATOR_NS, "--tail=80",
                                                  check=False).stdout[-6000:])
    return "\n".join(parts)
