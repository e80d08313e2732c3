#!/usr/bin/env bash
# Debian packages the project needs at run time, installed only when missing (idempotent, fast when
# everything is there: no apt-get update, no network).
#
#   fortunes, fortunes-min  real English sayings/quotations  -> /usr/share/games/fortunes/
#   wordnet-base            WordNet 3.0 (words, definitions, example sentences) -> /usr/share/wordnet/
#
# They are the text of `builtin:english` / `builtin:english-heldout` (interlace/builtin/english.py), the
# calibration, finetuning and held-out data of the embedded default that runs without any hub.
#
# With --node, the packages of the testbed's real node and of the image build instead (hack/test.sh):
#   containerd, runc, containernetworking-plugins, iptables, conntrack   a real Kubernetes node
#   mmdebstrap                                                           the images' Debian root filesystem
# Run as root (CI, containers) or with sudo available.
set -euo pipefail

packages=(fortunes fortunes-min wordnet-base)
if [ "${1-}" = "--node" ]; then
  packages=(containerd runc containernetworking-plugins iptables ipset conntrack mmdebstrap)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "[system-deps] present: ${packages[*]}"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "[system-deps] missing ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "[system-deps] installing: ${missing[*]}"
# Update the package lists only when the install fails with the lists we have (stale or absent).
if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
