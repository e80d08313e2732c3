#!/usr/bin/env bash
# Issue 28 item 1, the harness trial: one venv per candidate harness, outside the repo.
# NOT run by CI, not imported by tests. Usage: hack/harness-trial.sh [ROOT]   (default /work/harness-trial)
#
# Steps done here: create the venvs (python 3.11, uv), install each harness with the torch the
# project's venv already has (so uv hardlinks torch + the nvidia-* CUDA libraries from the uv cache
# instead of downloading ~5 GB per venv), time the install, measure the venv, check the import.
# Not done yet (see docs/evaluation.md, "Choosing the harness: the trial"): the one offline task per
# harness on a tiny local benchmark copy.
set -euo pipefail
ROOT=${1:-/work/harness-trial}
UV=${UV:-uv}
PY=${PY:-python3.11}
TORCH=${TORCH:-2.14.1}
TORCHVISION=${TORCHVISION:-0.29.2}
TORCH_CACHE=${TORCH_CACHE:-$HOME/.cache/uv}   # a uv cache that already holds torch $TORCH (the project's)
mkdir -p "$ROOT"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION" > "$ROOT/constraints.txt"
export UV_CACHE_DIR="$ROOT/uv-cache"   # everything newly downloaded stays under ROOT
df -h "$ROOT" | tail -1

for spec in nvidia-vlmeval==26.3 ms-vlmeval==0.0.20 lmms-eval==0.7.3; do
  name=${spec%%==*}; venv="$ROOT/$name"
  rm -rf "$venv"; "$UV" venv -q -p "$PY" "$venv"
  # torch first, offline from the cache that has it (hardlinks; falls back to a download if missing)
  VIRTUAL_ENV=$venv UV_CACHE_DIR=$TORCH_CACHE "$UV" pip install -q --link-mode hardlink --offline \
      -r "$ROOT/constraints.txt" 2>/dev/null \
    || VIRTUAL_ENV=$venv "$UV" pip install -q --link-mode hardlink -r "$ROOT/constraints.txt"
  t0=$(date +%s.%N)
  VIRTUAL_ENV=$venv "$UV" pip install --link-mode hardlink -c "$ROOT/constraints.txt" "$spec" > "$ROOT/$name.install.log" 2>&1
  t1=$(date +%s.%N)
  mod=vlmeval; [ "$name" = lmms-eval ] && mod=lmms_eval
  t2=$(date +%s.%N)
  HF_HUB_OFFLINE=1 "$venv/bin/python" -c "import $mod" > "$ROOT/$name.import.log" 2>&1 && ok=yes || ok=no
  t3=$(date +%s.%N)
  printf '%s: install %.1f s (%s), venv %s (apparent, torch hardlinked), import %s in %.1f s\n' \
    "$spec" "$(echo "$t1-$t0" | bc)" "$(grep -E '^Resolved' "$ROOT/$name.install.log" | head -1)" \
    "$(du -sh "$venv" | cut -f1)" "$ok" "$(echo "$t3-$t2" | bc)"
done
echo "new disk used under $ROOT: $(du -shc "$ROOT"/uv-cache "$ROOT"/nvidia-vlmeval "$ROOT"/ms-vlmeval "$ROOT"/lmms-eval | tail -1)"
df -h "$ROOT" | tail -1
