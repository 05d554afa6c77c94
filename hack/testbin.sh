#!/usr/bin/env bash
# Builds the test binaries (kube-apiserver, kube-controller-manager, etcd, CAPI core / kubeadm
# bootstrap / kubeadm control-plane managers, clusterctl, the in-cluster IPAM provider) with 'go build' from the Go module proxy, at the versions
# pinned in hack/testbin-versions.env, and copies CAPI's CRDs and webhook manifests next to them.
#
# Output: ${BESKAR7_TESTBIN:-$HOME/.cache/beskar7/testbin}/<key>/ where <key> encodes the pinned
# versions, so bumping a pin never reuses stale binaries. The Rust harness (beskar7-test) derives
# the same directory from the same file. Builds whose output exists are skipped: a warm run takes
# seconds. GOMODCACHE and GOCACHE stay at Go's defaults (outside the repo).
#
# The wrapper modules in hack/tools/ exist because these modules carry replace directives that
# 'go install pkg@version' refuses (see DESIGN.md section 7); their go.mod/go.sum are committed so
# builds are reproducible. After bumping a pin, run hack/update-testbin-wrappers.sh.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=testbin-versions.env
source "${HACK_DIR}/testbin-versions.env"

KEY="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_capi-${CAPI_VERSION}_layout-${TESTBIN_LAYOUT}"
OUT="${BESKAR7_TESTBIN:-${HOME}/.cache/beskar7/testbin}/${KEY}"
BIN="${OUT}/bin"
mkdir -p "${BIN}"

command -v go >/dev/null || { echo "testbin: 'go' not found in PATH; install Go >= 1.26" >&2; exit 1; }
# Never let 'go' download a newer toolchain (a prebuilt binary) when the wrappers' 'go 1.26.0'
# line is newer than the installed Go: fail with Go's "requires go >= ..." message instead.
export GOTOOLCHAIN=local
# /usr/bin/time (Debian package 'time', installed by hack/ensure-debs.sh) reports the peak RSS.
TIME_BIN=""
[ -x /usr/bin/time ] && TIME_BIN=/usr/bin/time

# "vX.Y.Z" -> major X and minor Y, as the version packages expect them.
semver_major() { local v="${1#v}"; echo "${v%%.*}"; }
semver_minor() { local v="${1#v}"; v="${v#*.}"; echo "${v%%.*}"; }

# Version variables of k8s.io/component-base: kube-apiserver must report a real version or the CAPI
# managers refuse it at start.
K8S_LDFLAGS="-X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION}"
K8S_LDFLAGS+=" -X k8s.io/component-base/version.gitMajor=$(semver_major "${KUBERNETES_VERSION}")"
K8S_LDFLAGS+=" -X k8s.io/component-base/version.gitMinor=$(semver_minor "${KUBERNETES_VERSION}")"
K8S_LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
# The same variables CAPI's hack/scripts/release/version.sh sets (buildDate left out so builds are
# reproducible).
CAPI_LDFLAGS="-X sigs.k8s.io/cluster-api/version.gitVersion=${CAPI_VERSION}"
CAPI_LDFLAGS+=" -X sigs.k8s.io/cluster-api/version.gitMajor=$(semver_major "${CAPI_VERSION}")"
CAPI_LDFLAGS+=" -X sigs.k8s.io/cluster-api/version.gitMinor=$(semver_minor "${CAPI_VERSION}")"
CAPI_LDFLAGS+=" -X sigs.k8s.io/cluster-api/version.gitTreeState=clean"

# Sum of VmRSS (KiB) of a process and all its descendants.
tree_rss_kib() {
  local pid="$1" total child
  total="$(awk '/^VmRSS:/ {print $2}' "/proc/${pid}/status" 2>/dev/null || true)"
  total="${total:-0}"
  for child in $(cat /proc/"${pid}"/task/*/children 2>/dev/null); do
    total=$((total + $(tree_rss_kib "${child}")))
  done
  echo "${total}"
}

built_any=0
# build NAME WRAPPER_DIR PACKAGE LDFLAGS
build() {
  local name="$1" wrapper="$2" pkg="$3" ldflags="$4"
  local target="${BIN}/${name}"
  if [ -x "${target}" ]; then
    echo "testbin: ${name}: cached (${target})"
    return
  fi
  built_any=1
  echo "testbin: ${name}: building ${pkg} ..."
  local tmp="${target}.tmp.$$" timing="${OUT}/.${name}.time"
  local start=$SECONDS
  local -a timer=()
  [ -n "${TIME_BIN}" ] && timer=("${TIME_BIN}" -v -o "${timing}")
  # -trimpath keeps local paths out of the binaries; CGO off gives static binaries like upstream's.
  (cd "${HACK_DIR}/tools/${wrapper}" &&
    exec env CGO_ENABLED=0 "${timer[@]}" go build -mod=readonly -trimpath -ldflags "${ldflags}" -o "${tmp}" "${pkg}") &
  local build_pid=$! peak_tree=0 now
  # go build runs up to GOMAXPROCS compilers at once: sample the whole process tree once a second
  # for the memory a build machine needs (ru_maxrss below only covers the largest process).
  while kill -0 "${build_pid}" 2>/dev/null; do
    now="$(tree_rss_kib "${build_pid}")"
    [ "${now}" -gt "${peak_tree}" ] && peak_tree="${now}"
    sleep 1
  done
  wait "${build_pid}"
  mv "${tmp}" "${target}"
  local rss="unknown (no /usr/bin/time)"
  if [ -f "${timing}" ]; then
    rss="$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2/1024}' "${timing}")"
  fi
  local line
  line="$(printf '%-30s %5ds  peak RSS: largest process %s, process tree %d MiB (sampled)' \
    "${name}" $((SECONDS - start)) "${rss}" $((peak_tree / 1024)))"
  echo "testbin: built ${line}"
  echo "$(date -u +%FT%TZ) ${line}" >>"${OUT}/build-times.log"
}

overall=$SECONDS
# kube-apiserver first: it is the longest build.
build kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "${K8S_LDFLAGS}"
# Garbage collector and namespace controller for tests that need cascades (most of its packages are
# already compiled for kube-apiserver).
build kube-controller-manager kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager "${K8S_LDFLAGS}"
build etcd etcd go.etcd.io/etcd/server/v3 ""
build cluster-api-manager cluster-api sigs.k8s.io/cluster-api/core "${CAPI_LDFLAGS}"
build kubeadm-bootstrap-manager cluster-api sigs.k8s.io/cluster-api/bootstrap/kubeadm "${CAPI_LDFLAGS}"
build kubeadm-control-plane-manager cluster-api sigs.k8s.io/cluster-api/controlplane/kubeadm "${CAPI_LDFLAGS}"
build clusterctl cluster-api sigs.k8s.io/cluster-api/cmd/clusterctl "${CAPI_LDFLAGS}"
build "ipam-in-cluster-manager-${IPAM_PROVIDER_VERSION}" ipam-in-cluster \
  sigs.k8s.io/cluster-api-ipam-provider-in-cluster ""

# CAPI's CRDs and webhook manifests, from the module cache (the same release as the managers).
if [ ! -f "${OUT}/manifests.done" ]; then
  capi_dir="$(cd "${HACK_DIR}/tools/cluster-api" && go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api)"
  for provider in core:core bootstrap-kubeadm:bootstrap/kubeadm controlplane-kubeadm:controlplane/kubeadm; do
    name="${provider%%:*}" src="${capi_dir}/${provider#*:}/config"
    mkdir -p "${OUT}/capi/${name}/crds" "${OUT}/capi/${name}/webhook"
    cp "${src}"/crd/bases/*.yaml "${OUT}/capi/${name}/crds/"
    cp "${src}/webhook/manifests.yaml" "${OUT}/capi/${name}/webhook/manifests.yaml"
  done
  # Module cache files are read-only; the harness only reads them, but keep the copies writable so
  # the cache dir can be removed with plain 'rm -r'.
  chmod -R u+w "${OUT}/capi"
  touch "${OUT}/manifests.done"
fi

# The IPAM provider's pool CRDs, from the module cache (the same release as its manager).
ipam_crds="${OUT}/ipam-in-cluster-${IPAM_PROVIDER_VERSION}/crds"
if [ ! -d "${ipam_crds}" ]; then
  ipam_dir="$(cd "${HACK_DIR}/tools/ipam-in-cluster" &&
    go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api-ipam-provider-in-cluster)"
  mkdir -p "${ipam_crds}.tmp"
  cp "${ipam_dir}"/config/crd/bases/*.yaml "${ipam_crds}.tmp/"
  chmod -R u+w "${ipam_crds}.tmp"
  mv "${ipam_crds}.tmp" "${ipam_crds}"
fi

# clusterctl's provider inventory CRD: 'clusterctl move' reads the inventory in both clusters.
if [ ! -f "${OUT}/capi/clusterctl/clusterctl-api.yaml" ]; then
  capi_dir="$(cd "${HACK_DIR}/tools/cluster-api" && go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api)"
  mkdir -p "${OUT}/capi/clusterctl"
  cp "${capi_dir}/cmd/clusterctl/config/manifest/clusterctl-api.yaml" "${OUT}/capi/clusterctl/"
  chmod u+w "${OUT}/capi/clusterctl/clusterctl-api.yaml"
fi

cat >"${OUT}/versions.env" <<EOF
KUBERNETES_VERSION=${KUBERNETES_VERSION}
ETCD_VERSION=${ETCD_VERSION}
CAPI_VERSION=${CAPI_VERSION}
TESTBIN_LAYOUT=${TESTBIN_LAYOUT}
GO_VERSION=$(go env GOVERSION)
EOF

if [ "${built_any}" = 1 ]; then
  echo "testbin: done in $((SECONDS - overall))s: ${OUT}"
else
  echo "testbin: up to date: ${OUT}"
fi
