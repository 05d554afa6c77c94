#!/usr/bin/env bash
# Writes a clusterctl release of Beskar7, laid out as a local clusterctl repository:
#
#   out/infrastructure-beskar7/<version>/
#     infrastructure-components.yaml   config/default rendered by kustomize, image tag = <version>
#     metadata.yaml                    release series -> CAPI contract
#     cluster-template*.yaml           templates/
#     clusterclass-beskar7.yaml        templates/
#
# Usage: hack/release.sh v0.1.0            (make release VERSION=v0.1.0)
# Environment: OUT_DIR (default out), IMAGE (default ghcr.io/beskar7/beskar7),
#              KUSTOMIZE (a kustomize binary to use instead of the pinned one).
#
# kustomize: the pinned release is built once with 'go install' from the Go module proxy into
# ${BESKAR7_TOOLS:-~/.cache/beskar7/tools}/kustomize-<version>/ (like the test binaries, outside the
# repo), so no prebuilt download and no kubectl are needed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUSTOMIZE_VERSION=v5.8.1
VERSION="${1:-${VERSION:-}}"
OUT_DIR="${OUT_DIR:-${REPO_ROOT}/out}"
IMAGE="${IMAGE:-ghcr.io/beskar7/beskar7}"
DEV_IMAGE="ghcr.io/beskar7/beskar7:dev"

die() { echo "release: $*" >&2; exit 1; }

[[ "${VERSION}" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)(-[0-9A-Za-z.-]+)?$ ]] \
  || die "VERSION must look like v0.1.0 (got '${VERSION}'): make release VERSION=v0.1.0"
MAJOR="${BASH_REMATCH[1]}"
MINOR="${BASH_REMATCH[2]}"

# clusterctl refuses a version whose major.minor has no release series in metadata.yaml.
awk -v major="${MAJOR}" -v minor="${MINOR}" '
  /^[[:space:]]*-?[[:space:]]*major:/ { m = $NF }
  /^[[:space:]]*minor:/ { if (m == major && $NF == minor) found = 1 }
  END { exit !found }' "${REPO_ROOT}/metadata.yaml" \
  || die "metadata.yaml has no releaseSeries entry for ${MAJOR}.${MINOR}: add one (with its contract) first"

ensure_kustomize() {
  if [ -n "${KUSTOMIZE:-}" ]; then
    echo "${KUSTOMIZE}"
    return
  fi
  local dir="${BESKAR7_TOOLS:-${HOME}/.cache/beskar7/tools}/kustomize-${KUSTOMIZE_VERSION}"
  mkdir -p "${dir}"
  # Concurrent releases (parallel tests) build it once.
  exec 9>"${dir}.lock"
  command -v flock >/dev/null && flock 9
  if [ ! -x "${dir}/kustomize" ]; then
    command -v go >/dev/null || die "'go' not found: needed once to build kustomize ${KUSTOMIZE_VERSION} (or set KUSTOMIZE)"
    echo "release: building kustomize ${KUSTOMIZE_VERSION} into ${dir} ..." >&2
    GOBIN="${dir}" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}" >&2
  fi
  echo "${dir}/kustomize"
}

KUSTOMIZE_BIN="$(ensure_kustomize)"
DEST="${OUT_DIR}/infrastructure-beskar7/${VERSION}"
rm -rf "${DEST}"
mkdir -p "${DEST}"

components="${DEST}/infrastructure-components.yaml"
"${KUSTOMIZE_BIN}" build "${REPO_ROOT}/config/default" > "${components}.tmp"
grep -qF "image: ${DEV_IMAGE}" "${components}.tmp" || die "config/manager no longer uses ${DEV_IMAGE}; update hack/release.sh"
sed "s|image: ${DEV_IMAGE}|image: ${IMAGE}:${VERSION}|" "${components}.tmp" > "${components}"
rm -f "${components}.tmp"

cp "${REPO_ROOT}/metadata.yaml" "${DEST}/metadata.yaml"
shopt -s nullglob
templates=("${REPO_ROOT}"/templates/cluster-template*.yaml "${REPO_ROOT}"/templates/clusterclass-*.yaml)
[ "${#templates[@]}" -gt 0 ] || die "no templates in templates/"
cp "${templates[@]}" "${DEST}/"

echo "release: wrote ${DEST}:"
(cd "${DEST}" && ls -1)
