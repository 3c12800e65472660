#!/usr/bin/env bash
# Builds stigmer's reference components for the host platform into OUTDIR,
# the directory to embed with STIGMER_COMPONENTS_DIR=OUTDIR cargo build:
#
#   OUTDIR/stigmer-server          Go, static (CGO_ENABLED=0)
#   OUTDIR/workflow-runner         Go, static
#   OUTDIR/agent-runner/           PyInstaller onedir: agent-runner + _internal/
#   OUTDIR/components.toml         versions and service definitions
#
# Incremental: an output is rebuilt only when missing or older than its
# sources, and an unchanged output is never touched, so stigmer's build.rs
# (rerun-if-changed on OUTDIR) does not rebuild needlessly. Work files go to
# target/components-work. Prints OUTDIR's absolute path at the end.
#
# Needs: go (>= 1.19), python3 (3.11) with venv; PyInstaller is installed into
# target/venv (shared with tests/fixtures/build.sh).
#
# Usage: packaging/components/build.sh OUTDIR [EXTRA_TOML]
# EXTRA_TOML (the test fixtures' settings) is appended to OUTDIR/components.toml.
set -euo pipefail

if [[ $# -ne 1 && $# -ne 2 ]]; then
    echo "usage: $0 OUTDIR [EXTRA_TOML]" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
work="$root/target/components-work"

log() { printf 'components: %s\n' "$*" >&2; }
die() { printf 'components: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=../scripts/lib.sh
source "$root/packaging/scripts/lib.sh"

command -v go >/dev/null 2>&1 ||
    die "go not found: install Go: apt-get install golang-go on Debian, brew install go on macOS"
command -v python3 >/dev/null 2>&1 ||
    die "python3 not found: install Python 3.11: apt-get install python3 python3-venv on Debian, brew install python@3.11 on macOS"

mkdir -p "$work/bin"

# Versions: components.toml is what stigmer reports; each program prints its
# own. Refuse to build when they disagree.
toml_version() {
    awk -v section="[components.$1]" '
        $0 == section { inside = 1; next }
        /^\[/ { inside = 0 }
        inside && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
    ' "$here/components.toml"
}
check_version() { # NAME SOURCE PATTERN
    local want got
    want=$(toml_version "$1")
    got=$(sed -n "s/^$3 = \"\\(.*\\)\"\$/\\1/p" "$2" | head -n 1)
    [[ -n $want && $want == "$got" ]] ||
        die "version of $1 is '$got' in $2 but '$want' in $here/components.toml: make them agree"
}
check_version stigmer-server "$here/stigmer-server/main.go" "const version"
check_version workflow-runner "$here/workflow-runner/main.go" "const version"
check_version agent-runner "$here/agent-runner/agent_runner.py" "__version__"

# Go -------------------------------------------------------------------------
# Built into the work dir first (go build rewrites its output), then copied to
# OUTDIR only when the bytes differ. -trimpath and -buildvcs=false keep the
# binary independent of the checkout's path and of git state.
build_go() { # NAME
    local name=$1
    if [[ ! -e $out/$name ]] ||
        stale "$work/bin/$name" "$here/$name"/*.go "$here/go.mod" "$here/build.sh"; then
        log "go build $name"
        (cd "$here" && CGO_ENABLED=0 go build -trimpath -buildvcs=false \
            -ldflags="-s -w" -o "$work/bin/$name" "./$name")
        touch "$work/bin/$name"
        install_if_changed 755 "$work/bin/$name" "$out/$name"
    fi
}
build_go stigmer-server
build_go workflow-runner

# agent-runner (PyInstaller onedir) -----------------------------------------
ensure_pyinstaller

agent_src="$here/agent-runner/agent_runner.py"
# --strip: a pyenv-built libpython carries ~17 MiB of debug info (23 -> 6 MiB).
# Left off on macOS, where stripping would invalidate code signatures.
pyi_flags=()
[[ $(uname -s) == Linux ]] && pyi_flags+=(--strip)
if stale "$out/agent-runner/agent-runner" "$agent_src" "$pyinstaller_stamp" "$here/build.sh"; then
    log "pyinstaller --onedir agent-runner"
    "$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN --onedir ${pyi_flags[@]+"${pyi_flags[@]}"} \
        --name agent-runner \
        --distpath "$work/dist" --workpath "$work/build" --specpath "$work/spec" \
        "$agent_src" >&2
    # Stage under a hidden name (never taken for a component), then swap.
    rm -rf "$out/.agent-runner.tmp"
    cp -a "$work/dist/agent-runner" "$out/.agent-runner.tmp"
    rm -rf "$out/agent-runner"
    mv "$out/.agent-runner.tmp" "$out/agent-runner"
fi

toml="$here/components.toml"
if [[ $# -eq 2 ]]; then
    cat "$here/components.toml" "$2" > "$work/components.toml"
    toml="$work/components.toml"
fi
install_if_changed 644 "$toml" "$out/components.toml"

echo "$out"
