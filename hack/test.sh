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
#    `real_node` tests run the images as real pods, in a lane of their own beside the rest).
#    Exit code 5 (no tests collected) is a failure.
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
# Exit code 5 (no tests collected) is a failure.
pytest_rc() { if [ "$1" -eq 5 ]; then echo "pytest collected no tests ($2): that is a failure" >&2; echo 1; else echo "$1"; fi; }
set +e
if [ "$#" -gt 0 ]; then
  # Arguments (a path, -k, -m ...): one pytest run of exactly that (they come after --durations, and win).
  python -m pytest --durations=40 "$@"
  rc=$(pytest_rc $? "pytest $*")
else
  # The whole suite in two lanes at once. The real-node lane (tests/realnode: its own control plane
  # and node) spends most of its wall time in pods whose CPU limits hold them to 1.6 of the 2 cores,
  # and waiting on them; the other lane's tests fill the rest. Each lane is a full pytest run with
  # its own durations and directory table; the real-node lane's log is printed when both have ended.
  # A TERM/INT (a CI timeout) is passed on, so the real node's teardown still undoes its host changes.
  realnode_log=$(mktemp -t interlace-realnode-XXXX.log)
  python -m pytest --durations=15 tests/realnode >"$realnode_log" 2>&1 &
  realnode_pid=$!
  trap 'kill -TERM "$realnode_pid" 2>/dev/null; wait "$realnode_pid"; exit 143' TERM INT
  main_log=$(mktemp -t interlace-main-XXXX.log)
  python -m pytest --durations=40 --ignore=tests/realnode 2>&1 | tee "$main_log"
  rc_main=$(pytest_rc "${PIPESTATUS[0]}" "the main lane")
  wait "$realnode_pid"
  rc_node=$(pytest_rc $? "the real-node lane")
  trap - TERM INT
  printf '\n=== the real-node lane (tests/realnode, run beside the main lane), exit %s\n' "$rc_node"
  cat "$realnode_log"
  # The end of a CI log is what a reader sees first: each lane's failures, and the disk (a full disk
  # once made the real node's kubelet evict every image), come last.
  for lane in main realnode; do
    log_file=main_log; [ "$lane" = main ] || log_file=realnode_log
    printf '\n=== %s lane: failures\n' "$lane"
    grep -E '^(FAILED|ERROR) ' "${!log_file}" || echo "(none)"
  done
  printf '\n=== disk\n'; df -h "${TMPDIR:-/tmp}" "${INTERLACE_CACHE:-$HOME/.cache/interlace}" | awk '!seen[$0]++'
  rm -f "$realnode_log" "$main_log"
  printf '\n=== pytest lanes: main exit %s, real-node exit %s\n' "$rc_main" "$rc_node"
  rc=$(( rc_main != 0 ? rc_main : rc_node ))
fi
set -e
exit "$rc"
