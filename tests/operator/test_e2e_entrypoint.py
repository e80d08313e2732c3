"""End to end: the RayJob's own entrypoint, run as the RayJob would run it, reports into the PruneJob.

kwok pods run nothing, so the command KubeRay would submit on the Ray head runs here instead: the
entrypoint string from the RayJob the operator created, with the env of the RayJob's pod template
(INTERLACE_PRUNEJOB, and INTERLACE_PRUNEJOB_SPEC: the spec travels in the RayJob), authenticated as the job's own
ServiceAccount (a TokenRequest token, as a projected token would be), on a local Ray cluster with a
tiny model. The PruneJob must reach Succeeded with plan, progress and results in its status.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.operator.conftest import HELD, Cluster, prunejob, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.slow]


def _spec(model_dir: Path) -> dict:
    """A tiny but complete run: 2 of 8 layers dropped, 2 finetuning steps, perplexity, CPU only."""
    text = {"format": "text", "path": "builtin:english"}
    return {
        "model": {"source": str(model_dir), "dtype": "float32"},
        "pruning": {"numLayers": 2, "strategy": "interlace"},
        "calibration": {"data": {**text, "maxSamples": 16}, "numSamples": 8, "batchSize": 2, "maxLength": 64},
        "finetune": {
            "data": {**text, "maxSamples": 16}, "perDeviceBatchSize": 2, "gradientAccumulationSteps": 1,
            "maxSteps": 2, "maxLength": 64, "precision": "fp32", "gradientCheckpointing": False,
            "packing": False, "checkpointEverySteps": 1,
        },
        "evaluation": {"benchmarks": ["perplexity"], "maxSamples": 4, "batchSize": 2, "speed": False},
        # A cluster job needs a durable output: a claim, "mounted" below at INTERLACE_PVC_ROOT.
        "output": {"uri": "pvc://e2e-data/out", "saveCheckpoints": False},
        # HELD: KubeRay builds the Ray cluster but never submits (see tests/operator/conftest.py).
        "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "2", "memory": "4Gi", "nodeSelector": HELD,
                      "pvcName": "e2e-data"},
        "backoffLimit": 0,
    }


def test_rayjob_entrypoint_reports_into_the_prunejob(
    cluster: Cluster, run_operator, control_plane, tmp_path: Path
) -> None:
    from tests.fixtures.tiny import save_tiny

    model_dir = save_tiny("qwen3", tmp_path / "model")
    pvc_root = tmp_path / "pvc"
    pvc_root.mkdir()
    output = pvc_root / "out"
    run_operator()
    body = prunejob("e2e")
    body["spec"] = _spec(model_dir)
    cluster.apply(body)

    rayjob = wait_for(lambda: cluster.get("rayjob", "e2e-1"), timeout=60, what="RayJob e2e-1")
    wait_for(lambda: cluster.get("rolebinding", "e2e-job"), what="RoleBinding e2e-job")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    container = head["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # Run the entrypoint as is, with the pod's env.
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:4] == ["interlace", "run", "-f", "env:INTERLACE_PRUNEJOB_SPEC"]
    kubeconfig = control_plane.service_account_kubeconfig(cluster.ns, head["serviceAccountName"])

    # KubeRay would now report the Ray job as running.
    cluster.patch_rayjob_status("e2e-1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    run_env = dict(os.environ)
    run_env.pop("RAY_ADDRESS", None)
    run_env.update(env)
    run_env.update({"KUBECONFIG": str(kubeconfig), "HF_HUB_OFFLINE": "1", "INTERLACE_STATUS_INTERVAL": "1",
                    "INTERLACE_PVC_ROOT": str(pvc_root)})
    interlace = str(Path(sys.executable).with_name("interlace"))
    proc = subprocess.run([interlace, *argv[1:]], env=run_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    status = cluster.status("e2e")
    assert len(status["plan"]["drop"]) == 2 and status["plan"]["numLayers"] == 8
    assert status["progress"]["percent"] >= 0 and status["progress"]["lastUpdateTime"]
    assert status["results"]["layersBefore"] == 8 and status["results"]["layersAfter"] == 6
    assert status["stage"] == "Publishing"

    cluster.patch_rayjob_status("e2e-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    waited = cluster.kubectl("wait", "--for=condition=Succeeded", "prunejob/e2e", "--timeout=60s", check=False)
    assert waited.returncode == 0, waited.stderr
    table = cluster.kubectl("get", "pj", "e2e").stdout.splitlines()
    assert table[1].split()[1] == "Succeeded"
    assert (output / "results.json").is_file() and (output / "plan.json").is_file()
    message = cluster.condition("e2e", "Succeeded")["message"]
    assert "dropped layers" in message
