# Shell helpers shared by packaging/components/build.sh and tests/fixtures/build.sh (sourced).
# The caller defines log() and sets $root (the repository).

# The one pinned PyInstaller, in one venv shared by the components and the fixtures.
PYINSTALLER_VERSION=6.22.3
venv="$root/target/venv"
pyinstaller_stamp="$venv/.pyinstaller-$PYINSTALLER_VERSION"

# stale OUTPUT SOURCE... : true when OUTPUT is missing or older than a source.
stale() {
    local output=$1
    shift
    [[ -e $output ]] || return 0
    local src
    for src in "$@"; do
        [[ $src -nt $output ]] && return 0
    done
    return 1
}

# install_if_changed MODE SRC DEST: copy SRC to DEST unless identical, so unchanged outputs keep
# their mtime and cargo's rerun-if-changed on the components dir does not rebuild stigmer.
install_if_changed() {
    if ! cmp -s "$2" "$3"; then
        cp "$2" "$3.tmp"
        chmod "$1" "$3.tmp"
        mv -f "$3.tmp" "$3"
        log "updated $(basename "$3")"
    fi
}

# ensure_pyinstaller: the venv with the pinned PyInstaller.
ensure_pyinstaller() {
    [[ -e $pyinstaller_stamp ]] && return 0
    log "venv + pyinstaller==$PYINSTALLER_VERSION in $venv"
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "pyinstaller==$PYINSTALLER_VERSION"
    touch "$pyinstaller_stamp"
}
