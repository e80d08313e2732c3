#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls `bash hack/in-venv.sh bash hack/test.sh`).
#
# hack/in-venv.sh has already installed the Debian packages and the virtualenv. Then:
# 1. the real control plane's and the real node's binaries, compiled from Go modules and cached outside
#    the clone; the real node's Debian packages (containerd, runc, CNI plugins, iptables, mmdebstrap),
# 2. the container images (hack/images/build.py: Debian root filesystem + PyPI wheels, cached by content),
# 3. the chart archive: `helm package` (the pinned helm) into dist/, the artifact to publish,
# 4. static checks: ruff, import-linter contracts (the operator never reaches torch), mypy (pyproject.toml),
# 5. pytest (CRD drift is a test; tests/packaging installs a packaged archive into the control plane;
#    `real_node` tests run the images as real pods). Exit code 5 (no tests collected) is a failure.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
start=$(date +%s)
# Each phase's wall time, printed as a table when the script ends (also on a failure), so every CI log
# shows where its minutes went (docs/testbed.md has the budget per phase and per test directory).
phases=() phase_start=$start phase_name=""
step() {
  local now; now=$(date +%s)
  [ -z "$phase_name" ] || phases+=("$(printf '%6ss  %s' "$(( now - phase_start ))" "$phase_name")")
  phase_name="$*" phase_start=$now
  printf '\n=== [%4ss] %s\n' "$(( now - start ))" "$*"
}
summary() {
  local rc=$? now; now=$(date +%s)
  [ -z "$phase_name" ] || phases+=("$(printf '%6ss  %s' "$(( now - phase_start ))" "$phase_name")")
  printf '\n=== phase times (hack/test.sh, exit %s)\n' "$rc"
  printf '%s\n' "${phases[@]}"
  printf '%6ss  total\n' "$(( now - start ))"
}
trap summary EXIT

step "control-plane binaries (cached in ${INTERLACE_TESTBED_DIR:-${INTERLACE_CACHE:-$HOME/.cache/interlace}/testbed})"
bash hack/testbed/build.sh

step "real-node packages"
bash hack/system-deps.sh --node

step "images (cached in ${INTERLACE_CACHE:-$HOME/.cache/interlace}/images)"
python hack/images/build.py

step "chart archive (helm package into dist/)"
helm_dir=$(bash hack/testbed/build.sh --print-dir | awk '$1 == "helm" {print $2}')
mkdir -p dist
"$helm_dir/helm" lint --strict charts/interlace-operator
"$helm_dir/helm" package charts/interlace-operator --destination dist
sha256sum dist/interlace-operator-*.tgz

step "ruff"
ruff check .

step "import contracts"
lint-imports

step "mypy (cache in ${INTERLACE_CACHE:-$HOME/.cache/interlace}/mypy)"
MYPY_CACHE_DIR="${INTERLACE_CACHE:-$HOME/.cache/interlace}/mypy" mypy

step "pytest"
# Tests start many Python processes (Ray workers, CLI subprocesses, the operator): let them cache bytecode.
unset PYTHONDONTWRITEBYTECODE
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
# --durations: the slowest tests in every log (an argument given to this script comes after, and wins).
python -m pytest --durations=40 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
