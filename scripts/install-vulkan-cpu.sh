#!/usr/bin/env bash
# Installs a software Vulkan driver (Mesa's lavapipe) and Mesa's software OpenGL (llvmpipe through
# EGL), so that segkit's GPU code path (Burn's wgpu backend: SPIR-V on Vulkan, WGSL on OpenGL) can
# be tested on a machine without a GPU. `.ci/run` runs it before the tests; run it yourself before
# `cargo test --release` if you want the GPU tests to run instead of skip.
#
# Idempotent: when a lavapipe new enough for segkit's kernels is already installed it says so and
# changes nothing. Why "new enough": Debian 12's own Mesa 22.3 lacks the Vulkan features cubecl's
# SPIR-V compiler needs on lavapipe and crashed while compiling its kernels, so on Debian 12 the
# driver comes from Debian's `bookworm-backports` suite (Mesa 25.0). Debian 13 and Ubuntu 24.04 or
# later ship a new enough Mesa in their main archive.
#
# Usage: scripts/install-vulkan-cpu.sh [--check]
#   --check   only report whether a suitable driver is installed (exit 0 yes, 1 no); install nothing.
set -euo pipefail

MIN_MESA_MAJOR=24
PACKAGES=(mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri)

say() { printf 'install-vulkan-cpu: %s\n' "$*" >&2; }

# The installed Mesa Vulkan drivers' version, from the package manager ("" when not installed).
mesa_version() {
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status} ${Version}\n' mesa-vulkan-drivers 2>/dev/null |
            awk '$1 == "install" && $3 == "installed" { print $4 }'
    fi
}

# The lavapipe ICD manifest the Vulkan loader reads, if any.
lavapipe_icd() {
    local f
    for f in /usr/share/vulkan/icd.d/lvp_icd*.json /etc/vulkan/icd.d/lvp_icd*.json; do
        [ -e "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

# 0 when lavapipe is installed and its Mesa is at least MIN_MESA_MAJOR (the EGL pieces too).
suitable() {
    local icd version major
    icd=$(lavapipe_icd) || return 1
    version=$(mesa_version)
    if [ -z "$version" ]; then
        # Not a dpkg system, or Mesa from elsewhere: trust the manifest, say what was found.
        say "found $icd (Mesa version unknown: not installed by dpkg)"
        return 0
    fi
    # Debian versions look like 25.0.7-2~bpo12+1 or 1:25.0.7-...; take the major number.
    major=${version#*:}
    major=${major%%.*}
    if [ "$major" -lt "$MIN_MESA_MAJOR" ] 2>/dev/null; then
        say "found lavapipe from Mesa $version, older than $MIN_MESA_MAJOR (it crashes on segkit's kernels)"
        return 1
    fi
    if command -v dpkg-query >/dev/null 2>&1; then
        local p
        for p in libegl1 libegl-mesa0; do
            dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || {
                say "lavapipe from Mesa $version is there but $p (software OpenGL through EGL) is not"
                return 1
            }
        done
    fi
    say "lavapipe from Mesa $version is installed ($icd); nothing to do"
    return 0
}

if [ "${1:-}" = "--check" ]; then
    suitable
    exit
fi
if suitable; then
    exit 0
fi

# Installing needs root (CI runs as root; elsewhere use sudo when it is there).
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        say "installing Mesa's software Vulkan needs root; run this script as root"
        exit 1
    fi
fi

. /etc/os-release 2>/dev/null || true
case "${ID:-unknown}:${VERSION_CODENAME:-}" in
    debian:bookworm)
        # Debian 12: Mesa 25 from bookworm-backports, the suite added in Debian's deb822 sources
        # format and signed with the Debian archive keyring the system already has.
        src=/etc/apt/sources.list.d/bookworm-backports.sources
        if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            say "adding Debian's bookworm-backports suite ($src)"
            "${SUDO[@]}" tee "$src" >/dev/null <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        fi
        "${SUDO[@]}" apt-get update -qq
        say "installing ${PACKAGES[*]} from bookworm-backports"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends -t bookworm-backports "${PACKAGES[@]}" >/dev/null
        ;;
    debian:* | ubuntu:*)
        # Debian 13+ and Ubuntu 24.04+ ship Mesa 24 or later in their main archive.
        "${SUDO[@]}" apt-get update -qq
        say "installing ${PACKAGES[*]}"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
        ;;
    *)
        say "this system (${PRETTY_NAME:-unknown}) is not Debian or Ubuntu; install Mesa $MIN_MESA_MAJOR or later"
        say "with its Vulkan drivers (lavapipe) and EGL yourself (Fedora: mesa-vulkan-drivers mesa-libEGL;"
        say "Arch: vulkan-swrast mesa), then run this script again to check"
        exit 1
        ;;
esac

if suitable; then
    exit 0
fi
say "the install finished but no suitable lavapipe was found; see the messages above"
exit 1
