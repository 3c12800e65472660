#!/usr/bin/env bash
# Fetches the corpus of real third-party programs (pinned by version, verified by sha256, kept in
# a download cache that survives `cargo clean` and CI runs) and lays them out as a components
# directory in OUTDIR for a second stigmer build (make corpus). The tests in tests/cli/corpus.rs
# run each program directly from OUTDIR and through that build, and compare.
#
#   busybox          static C multicall program      Debian busybox-static
#   jq               dynamically linked C CLI        Debian jq (libjq1 from deps.sh)
#   caddy            Go server, links os.Executable  Debian caddy (caddy-memfd: the same bytes
#                                                    with runner = "memfd")
#   rg               Rust CLI                        Debian ripgrep
#   bun              single-file ELF of 102 MiB      npm @oven/bun-linux-x64 (bun-cache: the
#                                                    same bytes with runner = "cache", for make bench)
#   yamllint         PyInstaller onedir              PyPI yamllint + pyyaml (C extension _yaml)
#   yamllint-onefile PyInstaller onefile             the same app
# and three small programs of our own that probe build.rs's sniffing of Go programs that link
# os.Executable (tests/corpus/self): go-exe (links it and re-runs itself through it; go-exe-memfd
# is the same bytes with runner = "memfd"), go-mentions and c-mentions (only name it).
#
# Incremental like tests/fixtures/build.sh: unchanged outputs keep their mtime.
# Usage: tests/corpus/build.sh OUTDIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
work="$(dirname "$out")/work"
cache=${STIGMER_CORPUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stigmer-corpus}
mkdir -p "$work" "$cache"

log() { printf 'corpus: %s\n' "$*" >&2; }
# shellcheck source=../../packaging/scripts/lib.sh
source "$root/packaging/scripts/lib.sh"

# Pins: package, version, file, sha256 ------------------------------------------------------
debs=(
    "busybox-static 1:1.35.0-4+deb12u1+b1 busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"
    "jq 1.6-2.1+deb12u3 jq_1.6-2.1+deb12u3_amd64.deb c25f3fda201207ed98b1d63686f2d81b9dfeb99f1ab2d1d35fb3f7b6a1c107dc"
    "caddy 2.6.2-5 caddy_2.6.2-5_amd64.deb 383b75bbffeee1d5284a9bddb3628fddc31dd16157d8a3d7b1ad6c77cadc5e73"
    "ripgrep 13.0.0-4+b2 ripgrep_13.0.0-4+b2_amd64.deb feba1aea6022d84c67293686fe82132f7283d3c485a2cbd5af5c0e210615ecc2"
)
bun_version=1.4.4
bun_tgz=oven-bun-linux-x64-$bun_version.tgz
bun_sha256=93ca5a2abe45f3bcac6dd55baff8bb06c4ac824b70f89650b54e5c8b80dbef18
# pip verifies these hashes itself (--require-hashes); CPython 3.11 on x86_64 Linux.
wheels="$here/requirements.txt"

if [[ $(uname -sm) != "Linux x86_64" ]]; then
    echo "corpus: the corpus pins x86_64 Linux packages; this is $(uname -sm)" >&2
    exit 1
fi

verify() { # FILE SHA256
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [[ $got != "$2" ]]; then
        rm -f "$1"
        echo "corpus: $1: sha256 $got, pinned $2 (removed; a registry that changed a published file is a pin to review in $here/build.sh)" >&2
        exit 1
    fi
}

# Downloads ---------------------------------------------------------------------------------
# apt-get download writes into the current directory; that its sandbox user cannot write the
# cache only costs a warning, which is dropped.
apt_download() { (cd "$cache" && apt-get download -q "$1" >/dev/null 2>&1); }
for entry in "${debs[@]}"; do
    read -r pkg version file sha <<<"$entry"
    if [[ ! -f $cache/$file ]]; then
        log "apt-get download $pkg=$version"
        # A fresh machine may have no package lists yet: update them once (as root), then retry.
        apt_download "$pkg=$version" ||
            { [[ $(id -u) -eq 0 ]] && apt-get update -qq >&2 && apt_download "$pkg=$version"; } || true
        if [[ ! -f $cache/$file ]]; then
            echo "corpus: apt-get download $pkg=$version failed: run apt-get update, or if the mirror dropped that version, pin the current one in $here/build.sh" >&2
            exit 1
        fi
    fi
    verify "$cache/$file" "$sha"
done
if [[ ! -f $cache/$bun_tgz ]]; then
    log "npm pack @oven/bun-linux-x64@$bun_version"
    (cd "$cache" && npm pack --silent "@oven/bun-linux-x64@$bun_version" >/dev/null)
fi
verify "$cache/$bun_tgz" "$bun_sha256"
ensure_pyinstaller
if ! ls "$cache"/wheels/yamllint-*.whl >/dev/null 2>&1 || [[ $wheels -nt $cache/wheels ]]; then
    log "pip download (yamllint, pyyaml, pathspec)"
    "$venv/bin/pip" download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
        --require-hashes -r "$wheels" -d "$cache/wheels"
    touch "$cache/wheels"
fi

# Components --------------------------------------------------------------------------------
deb_member() { # DEB PATH-IN-PACKAGE NAME
    if stale "$out/$3" "$1" "$here/build.sh"; then
        log "$3 from $(basename "$1")"
        rm -rf "$work/deb"
        mkdir -p "$work/deb"
        dpkg-deb -x "$1" "$work/deb"
        install_if_changed 755 "$work/deb/$2" "$out/$3"
    fi
}
deb_member "$cache/busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb" bin/busybox busybox
deb_member "$cache/jq_1.6-2.1+deb12u3_amd64.deb" usr/bin/jq jq
deb_member "$cache/caddy_2.6.2-5_amd64.deb" usr/bin/caddy caddy
install_if_changed 755 "$out/caddy" "$out/caddy-memfd"
deb_member "$cache/ripgrep_13.0.0-4+b2_amd64.deb" usr/bin/rg rg
if stale "$out/bun" "$cache/$bun_tgz" "$here/build.sh"; then
    log "bun from $bun_tgz"
    rm -rf "$work/bun"
    mkdir -p "$work/bun"
    tar -xzf "$cache/$bun_tgz" -C "$work/bun" package/bin/bun
    install_if_changed 755 "$work/bun/package/bin/bun" "$out/bun"
fi
install_if_changed 755 "$out/bun" "$out/bun-cache"

# Programs that look for themselves (tests/corpus/self): build.rs's os.Executable sniffing.
self_src=$here/self
for prog in go-exe go-mentions; do
    if stale "$out/$prog" "$self_src/$prog.go" "$here/build.sh"; then
        log "go build $prog"
        mkdir -p "$work/$prog"
        cp "$self_src/$prog.go" "$work/$prog/main.go"
        printf 'module example.com/%s\n\ngo 1.19\n' "$prog" >"$work/$prog/go.mod"
        # Stripped, as distributions ship Go programs.
        (cd "$work/$prog" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/$prog.bin" .)
        install_if_changed 755 "$work/$prog.bin" "$out/$prog"
    fi
done
install_if_changed 755 "$out/go-exe" "$out/go-exe-memfd"
if stale "$out/c-mentions" "$self_src/c-mentions.c"; then
    log "cc c-mentions"
    "${CC:-cc}" -O2 -o "$work/c-mentions" "$self_src/c-mentions.c"
    install_if_changed 755 "$work/c-mentions" "$out/c-mentions"
fi

# The PyInstaller app: yamllint (its default configs are package data) on PyYAML, whose wheel
# carries the C extension yaml._yaml (libyaml).
app_stamp="$venv/.corpus-yamllint"
if stale "$app_stamp" "$wheels"; then
    log "pip install yamllint into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links "$cache/wheels" \
        --require-hashes -r "$wheels"
    touch "$app_stamp"
fi
pyinstall() { # NAME MODE
    "$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN "--$2" --name "$1" \
        --collect-data yamllint --hidden-import yaml._yaml \
        --distpath "$work/dist" --workpath "$work/build" --specpath "$work/spec" \
        "$here/yamllint_main.py" >&2
}
if stale "$out/yamllint/yamllint" "$app_stamp" "$pyinstaller_stamp" "$here/yamllint_main.py"; then
    log "pyinstaller --onedir yamllint"
    pyinstall yamllint onedir
    rm -rf "$out/yamllint" "$out/.yamllint.tmp"
    cp -a "$work/dist/yamllint" "$out/.yamllint.tmp"
    mv "$out/.yamllint.tmp" "$out/yamllint"
fi
if stale "$out/yamllint-onefile" "$app_stamp" "$pyinstaller_stamp" "$here/yamllint_main.py"; then
    log "pyinstaller --onefile yamllint-onefile"
    pyinstall yamllint-onefile onefile
    mv -f "$work/dist/yamllint-onefile" "$out/yamllint-onefile"
fi

install_if_changed 644 "$here/components.toml" "$out/components.toml"
echo "$out"
