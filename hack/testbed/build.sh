#!/usr/bin/env bash
# Build the pinned binaries of the test control plane from Go modules (no Docker, no release downloads).
#
#   bash hack/testbed/build.sh               # everything: kubernetes etcd kwok kuberay helm node coredns kube_router kueue
#   bash hack/testbed/build.sh etcd kwok     # only some components
#   bash hack/testbed/build.sh --print-dir   # print the binary directory of every component
#
# Output: ${INTERLACE_TESTBED_DIR:-${INTERLACE_CACHE:-$HOME/.cache/interlace}/testbed}/<name>-<version>/<binary>.
# A component whose directory exists is skipped, so a second run costs nothing. Each component is
# built into a temporary directory that is renamed at the end: an interrupted build leaves no
# half-filled cache entry. Builds run under `nice` with TESTBED_BUILD_JOBS (default 2) packages in
# parallel. GOCACHE/GOMODCACHE keep their defaults ($HOME/.cache/go-build, $HOME/go/pkg/mod).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

OUT=${INTERLACE_TESTBED_DIR:-${INTERLACE_CACHE:-$HOME/.cache/interlace}/testbed}
JOBS=${TESTBED_BUILD_JOBS:-2}
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod -buildvcs=false"
GO=(nice -n "${TESTBED_NICE:-10}" go)
ALL=(kubernetes etcd kwok kuberay kuberay_newest helm node coredns kube_router kueue)

log() { printf '[testbed-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

component_dir() {  # name -> cache directory
  case $1 in
    kubernetes) echo "$OUT/kubernetes-$K8S_VERSION" ;;
    etcd) echo "$OUT/etcd-$ETCD_VERSION" ;;
    kwok) echo "$OUT/kwok-$KWOK_VERSION" ;;
    kuberay) echo "$OUT/kuberay-$KUBERAY_VERSION" ;;
    kuberay_newest) echo "$OUT/kuberay-$KUBERAY_NEWEST_VERSION" ;;
    helm) echo "$OUT/helm-$HELM_VERSION" ;;
    node) echo "$OUT/kubernetes-node-$K8S_VERSION" ;;
    coredns) echo "$OUT/coredns-$COREDNS_VERSION" ;;
    kube_router) echo "$OUT/kube-router-$KUBE_ROUTER_VERSION" ;;
    kueue) echo "$OUT/kueue-$KUEUE_VERSION" ;;
    *) echo "unknown component: $1 (known: ${ALL[*]})" >&2; return 1 ;;
  esac
}

# go_build NAME WRAPPER_GOMOD_TEXT LDFLAGS OUT1=PKG1 [OUT2=PKG2 ...]
# Builds all packages in ONE `go build` so shared packages are compiled once.
go_build() {
  local name=$1 gomod=$2 ldflags=$3; shift 3
  local dest work tmp start lock
  dest=$(component_dir "$name")
  if [[ -d $dest ]]; then log "$name: cached in $dest"; return 0; fi
  # One build per component at a time (several people/CI steps may run this script at once):
  # a second caller waits here, then finds the finished directory.
  mkdir -p "$OUT"
  exec {lock}>"$OUT/.lock-$(basename "$dest")"
  if ! flock -n "$lock"; then
    log "$name: another build is running, waiting for it"
    flock "$lock"
  fi
  if [[ -d $dest ]]; then log "$name: cached in $dest"; exec {lock}>&-; return 0; fi
  start=$SECONDS
  mkdir -p "$OUT/.work"
  # The wrapper module lives outside the repo and is regenerated every time (cheap).
  work="$OUT/.work/$(basename "$dest")"
  rm -rf "$work"; mkdir -p "$work"
  printf '%s\n' "$gomod" > "$work/go.mod"
  [[ -z ${GO_BUILD_MAIN:-} ]] || printf '%s' "$GO_BUILD_MAIN" > "$work/main.go"
  tmp=$(mktemp -d "$OUT/.tmp-$(basename "$dest").XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  local pkgs=() spec
  for spec in "$@"; do pkgs+=("${spec#*=}"); done
  log "$name: go build ${pkgs[*]}"
  (cd "$work" && "${GO[@]}" build -p "$JOBS" -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "${pkgs[@]}")
  # go build -o DIR/ names binaries after the last path element (without a /vN suffix): rename.
  for spec in "$@"; do
    local want=${spec%%=*} pkg=${spec#*=} got
    got=$(basename "$pkg"); [[ $got =~ ^v[0-9]+$ ]] && got=$(basename "$(dirname "$pkg")")
    [[ $pkg == . ]] && got=$(basename "$(sed -n 's/^module //p' "$work/go.mod")")
    [[ $got == "$want" ]] || mv "$tmp/$got" "$tmp/$want"
    [[ -x $tmp/$want ]] || { echo "$name: $want was not built" >&2; return 1; }
  done
  # Files a component needs besides its binaries (e.g. CRDs from the module source).
  [[ -z ${GO_BUILD_POST:-} ]] || (cd "$work" && "$GO_BUILD_POST" "$tmp")
  printf 'built %s in %ss with %s\n' "$(date -u +%FT%TZ)" "$((SECONDS - start))" "$(go version)" > "$tmp/BUILDINFO"
  chmod 755 "$tmp"
  mv -T "$tmp" "$dest"
  trap - EXIT
  exec {lock}>&-
  log "$name: built in $((SECONDS - start))s -> $dest"
}

simple_gomod() {  # MODULE VERSION -> wrapper go.mod requiring it
  printf 'module interlace.local/testbed/%s\n\ngo 1.24.0\n\nrequire %s %s\n' "$(basename "$1")" "$1" "$2"
}

k8s_ldflags() {  # the version stamp of every Kubernetes binary (kubectl version, /version)
  local v=$K8S_VERSION minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="" pkg key val
  local -A vars=([gitVersion]=$v [gitMajor]=1 [gitMinor]=$minor [gitTreeState]=clean [gitCommit]=
                 [buildDate]=$(date -u +%Y-%m-%dT%H:%M:%SZ))
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for key in "${!vars[@]}"; do val=${vars[$key]}; ld+=" -X $pkg.$key=$val"; done
  done
  echo "$ld"
}

build_kubernetes() {
  go_build kubernetes "$(bash "$here/gen-k8s-gomod.sh" "$K8S_VERSION")" "$(k8s_ldflags)" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kubectl=k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  # The module root is the etcd main package; its go.mod replaces siblings with ../ paths, which
  # `go install pkg@version` refuses, hence the wrapper module (replaces of dependencies are ignored).
  go_build etcd "$(simple_gomod go.etcd.io/etcd/server/v3 "$ETCD_VERSION")" "" \
    etcd=go.etcd.io/etcd/server/v3
}

build_kwok() {
  go_build kwok "$(simple_gomod sigs.k8s.io/kwok "$KWOK_VERSION")" \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    kwok=sigs.k8s.io/kwok/cmd/kwok
}

build_kuberay() {
  go_build kuberay "$(simple_gomod github.com/ray-project/kuberay/ray-operator "$KUBERAY_VERSION")" "" \
    ray-operator=github.com/ray-project/kuberay/ray-operator
}

build_kuberay_newest() {  # the real node's KubeRay (versions.env)
  go_build kuberay_newest "$(simple_gomod github.com/ray-project/kuberay/ray-operator "$KUBERAY_NEWEST_VERSION")" "" \
    ray-operator=github.com/ray-project/kuberay/ray-operator
}

build_helm() {
  # Like helm's Makefile: the Kubernetes version helm assumes (lint, template --kube-version
  # default) comes from its client-go minor (v0.34.x -> 1.34).
  [[ -d $(component_dir helm) ]] && { log "helm: cached in $(component_dir helm)"; return 0; }
  local helm_k8s="" pkg gomod minor
  gomod=$(cd "${TMPDIR:-/tmp}" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  minor=$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]}' "$gomod")
  [[ $minor =~ ^[0-9]+$ ]] || { echo "helm: cannot read the client-go version from $gomod" >&2; return 1; }
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_k8s+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  go_build helm "$(simple_gomod helm.sh/helm/v3 "$HELM_VERSION")" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean
     -X helm.sh/helm/v3/internal/version.metadata= $helm_k8s" \
    helm=helm.sh/helm/v3/cmd/helm
}

build_node() {
  # The real node's kubelet and kube-proxy: the same wrapper module as the control plane, so the
  # packages they share with it come from the Go build cache.
  go_build node "$(bash "$here/gen-k8s-gomod.sh" "$K8S_VERSION")" "$(k8s_ldflags)" \
    kubelet=k8s.io/kubernetes/cmd/kubelet \
    kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
}

build_coredns() {
  # A wrapper main with only the plugins the testbed's Corefile uses (tests/cluster/node.py): the
  # full CoreDNS links ~50 plugins and their cloud SDKs (19 min under load); this builds a fraction.
  local gomod main
  gomod="$(simple_gomod github.com/coredns/coredns "$COREDNS_VERSION")"
  main='package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() { coremain.Run() }
'
  GO_BUILD_MAIN="$main" go_build coredns "$gomod" "" coredns=.
}

build_kube_router() {  # the real node's NetworkPolicy enforcer (versions.env says why this one)
  go_build kube_router "$(simple_gomod github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION")" "" \
    kube-router=github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
}

kueue_crds() {  # DEST: Kueue's CRDs from the module source the build used (the kueue controller
  # installs none itself; tests/cluster/testbed.py applies DEST/crd/*.yaml)
  local dir
  dir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
  mkdir -p "$1/crd"
  cp "$dir"/config/components/crd/bases/*.yaml "$1/crd/"
  chmod 644 "$1"/crd/*.yaml
}

build_kueue() {
  # Kueue's controller manager (cmd/kueue) with every integration it links (ray.io/rayjob among
  # them); the testbed turns on only what its Configuration names.
  GO_BUILD_POST=kueue_crds go_build kueue "$(simple_gomod sigs.k8s.io/kueue "$KUEUE_VERSION")" \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION -X sigs.k8s.io/kueue/pkg/version.GitCommit=" \
    kueue=sigs.k8s.io/kueue/cmd/kueue
}

main() {
  if [[ ${1-} == --print-dir ]]; then
    local c; for c in "${ALL[@]}"; do echo "$c $(component_dir "$c")"; done; return 0
  fi
  local comps=("$@"); [[ ${#comps[@]} -gt 0 ]] || comps=("${ALL[@]}")
  command -v go >/dev/null || { echo "go is not on PATH" >&2; exit 1; }
  mkdir -p "$OUT"
  local c total=$SECONDS
  for c in "${comps[@]}"; do component_dir "$c" >/dev/null; "build_$c"; done
  log "done in $((SECONDS - total))s; binaries under $OUT"
}

main "$@"
