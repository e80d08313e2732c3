#!/usr/bin/env bash
# Start the test control plane by hand and keep it in the foreground until Ctrl-C.
#
#   bash hack/testbed/up.sh [--no-kuberay] [--no-kwok] [--gpu-nodes N] [--workdir DIR]
#
# Builds the pinned binaries first if needed (a no-op once cached), then starts etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake 8-GPU node) and the KubeRay
# operator on 127.0.0.1, and prints the `export KUBECONFIG=...` line to paste in another shell.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bash "$repo/hack/testbed/build.sh" >&2
python=${PYTHON:-${INTERLACE_CACHE:-$HOME/.cache/interlace}/venv/bin/python}
[[ -x $python ]] || python=python3   # the testbed library is stdlib-only
exec "$python" "$repo/tests/cluster/testbed.py" up "$@"
