# Sourced by build.sh and push-ecr.sh: the image tags of this checkout.
#   version  pyproject.toml's version
#   commit   the short git commit, "-dirty" when tracked files are modified
# Image tags: <version>-<kind> and <version>-<commit>-<kind>, kind = cpu | gpu.
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")"
commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [[ $commit != unknown && -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]]; then
    commit="${commit}-dirty"
fi
