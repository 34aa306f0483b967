#!/usr/bin/env bash
# Build the job images (containers/build.sh) and push them to the ECR repository of a
# stack deployed from infra/cryosnake.yaml, as REPOSITORY_URI:<version>-gpu and -cpu and
# REPOSITORY_URI:<version>-<commit>-gpu and -cpu (containers/tags.sh).
# Needs docker and the AWS CLI v2 with credentials for the stack's account. Run from
# anywhere.
#   containers/push-ecr.sh STACK                  build, log in, tag, push
#   containers/push-ecr.sh STACK --region REGION  the stack lives in REGION
#   containers/push-ecr.sh STACK --no-build       push the images built before
# Then: cryosnake aws profile --stack STACK (container-image = REPOSITORY_URI:<version>-gpu)
set -euo pipefail

usage="usage: $0 STACK [--region REGION] [--no-build]"
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=containers/tags.sh
source "$root/containers/tags.sh"

stack=""
build=1
region_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --region)
            [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
            region_args=(--region "$2")
            shift 2
            ;;
        --no-build)
            build=0
            shift
            ;;
        -h | --help)
            echo "$usage"
            exit 0
            ;;
        -*)
            echo "$usage" >&2
            exit 2
            ;;
        *)
            [[ -z $stack ]] || { echo "$usage" >&2; exit 2; }
            stack="$1"
            shift
            ;;
    esac
done
[[ -n $stack ]] || { echo "$usage" >&2; exit 2; }

# One output of the stack; fails if the stack or the output is missing.
output() {
    local value
    value="$(aws cloudformation describe-stacks ${region_args[@]+"${region_args[@]}"} --stack-name "$stack" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue | [0]" --output text)"
    if [[ -z $value || $value == None ]]; then
        echo "$0: stack $stack has no output $1 (deploy infra/cryosnake.yaml)" >&2
        exit 1
    fi
    printf '%s\n' "$value"
}

repository="$(output RepositoryUri)"
region="$(output Region)"
registry="${repository%%/*}"

if [[ $build -eq 1 ]]; then
    "$root/containers/build.sh"
fi

aws ecr get-login-password --region "$region" \
    | docker login --username AWS --password-stdin "$registry"

for kind in gpu cpu; do
    for tag in "${version}-${kind}" "${version}-${commit}-${kind}"; do
        docker tag "cryosnake/cryosnake:${tag}" "${repository}:${tag}"
        docker push "${repository}:${tag}"
        echo "pushed ${repository}:${tag}"
    done
done
echo "next: cryosnake aws profile --stack $stack --image-tag ${version}-gpu"
echo "  (or --image-tag ${version}-${commit}-gpu to pin this build)"
