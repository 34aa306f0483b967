#!/usr/bin/env bash
# Build the job images and, with --push REGISTRY, tag and push them there
# (e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com). Run from anywhere.
#   containers/build.sh                 build cryosnake/cryosnake:<version>-cpu and -gpu
#   containers/build.sh --push REGISTRY  build, then push REGISTRY/cryosnake:<version>-{cpu,gpu}
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")"
registry=""
if [[ $# -gt 0 ]]; then
    [[ $1 == --push && $# -eq 2 ]] || { echo "usage: $0 [--push REGISTRY]" >&2; exit 2; }
    registry="$2"
fi
for kind in cpu gpu; do
    tag="cryosnake/cryosnake:${version}-${kind}"
    docker build -f "$root/containers/Dockerfile.${kind}" -t "$tag" "$root"
    if [[ -n $registry ]]; then
        docker tag "$tag" "${registry}/cryosnake:${version}-${kind}"
        docker push "${registry}/cryosnake:${version}-${kind}"
    fi
done
