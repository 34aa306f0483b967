#!/usr/bin/env bash
# Build the job images for linux/amd64 (the Batch instances' platform, also from an
# arm64 laptop) and, with --push REGISTRY, tag and push them there
# (e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com). Run from anywhere.
#   containers/build.sh                  build cryosnake/cryosnake:<version>-cpu and -gpu,
#                                        also tagged <version>-<commit>-cpu and -gpu
#   containers/build.sh --push REGISTRY  build, then push REGISTRY/cryosnake:<both tags>
# <commit> is the checkout's short git commit, with "-dirty" when files are modified.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=containers/tags.sh
source "$root/containers/tags.sh"
registry=""
if [[ $# -gt 0 ]]; then
    [[ $1 == --push && $# -eq 2 ]] || { echo "usage: $0 [--push REGISTRY]" >&2; exit 2; }
    registry="$2"
fi
for kind in cpu gpu; do
    tags=("${version}-${kind}" "${version}-${commit}-${kind}")
    docker build --platform linux/amd64 -f "$root/containers/Dockerfile.${kind}" \
        --build-arg "CRYOSNAKE_VERSION=${version}" --build-arg "CRYOSNAKE_COMMIT=${commit}" \
        -t "cryosnake/cryosnake:${tags[0]}" -t "cryosnake/cryosnake:${tags[1]}" "$root"
    if [[ -n $registry ]]; then
        for tag in "${tags[@]}"; do
            docker tag "cryosnake/cryosnake:${tag}" "${registry}/cryosnake:${tag}"
            docker push "${registry}/cryosnake:${tag}"
        done
    fi
done
