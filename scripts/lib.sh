# Shared by scripts/run.sh and scripts/test.sh: install what is missing,
# configure once, build incrementally.

STMFS_PACKAGES="build-essential pkg-config meson ninja-build libfuse3-dev fuse3 libcjson-dev
libyaml-dev check libssl-dev openssl python3 jq inotify-tools entr graphviz procps psmisc"

ensure_packages() {
    local missing=()
    for p in $STMFS_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# build DIR [meson options...]: configure when needed, then build.
build() {
    local dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >/dev/null
    fi
    ninja -C "$dir" >/dev/null
}
