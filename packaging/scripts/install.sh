#!/usr/bin/env bash
# Installs stigmer without Homebrew, from an unpacked release tarball (this script ships at its
# top), under PREFIX:
#   PREFIX/bin/stigmer, PREFIX/bin/<component> -> stigmer for every embedded component,
#   PREFIX/share/man/man1/stigmer.1, bash/zsh/fish completions,
#   PREFIX/share/systemd/user/stigmer.service (ExecStart = PREFIX/bin/stigmer; never enabled here).
# Idempotent: files are replaced atomically only when they differ; a component link that already
# points at stigmer is kept; a real file (or a link elsewhere) with a component's name is never
# clobbered: it is reported and the install fails.
#
# Usage: install.sh PREFIX [UNPACKED_DIR]   (UNPACKED_DIR defaults to this script's directory)
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 PREFIX [UNPACKED_DIR]
Installs bin/stigmer, a link per component, the man page and completions under PREFIX
(for example ~/.local or /usr/local). UNPACKED_DIR defaults to this script's directory.
EOF
}
# An option is never a prefix: --help / -h print the usage, anything else starting with '-' is
# refused, rather than installing into a directory named "--help".
case ${1-} in
    -h | --help)
        usage
        exit 0
        ;;
    -*)
        echo "install: unknown option '$1'" >&2
        usage >&2
        exit 2
        ;;
esac
if [[ $# -lt 1 || $# -gt 2 ]]; then
    usage >&2
    exit 2
fi
prefix=$1
src=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
log() { printf 'install: %s\n' "$*" >&2; }

[[ -x $src/bin/stigmer && ! -L $src/bin/stigmer ]] || {
    log "$src/bin/stigmer not found: pass the unpacked stigmer-<version>-<target> directory"
    exit 1
}

# place MODE SRC DEST: copy unless identical, through a temp sibling and a rename.
place() {
    mkdir -p "$(dirname "$3")"
    if ! cmp -s "$2" "$3"; then
        cp "$2" "$3.tmp.$$"
        chmod "$1" "$3.tmp.$$"
        mv -f "$3.tmp.$$" "$3"
        log "installed $3"
    fi
}

place 755 "$src/bin/stigmer" "$prefix/bin/stigmer"
for file in share/man/man1/stigmer.1 share/bash-completion/completions/stigmer \
    share/zsh/site-functions/_stigmer share/fish/vendor_completions.d/stigmer.fish; do
    [[ -f $src/$file ]] && place 644 "$src/$file" "$prefix/$file"
done

# The systemd user unit, its ExecStart pointed at this prefix's stigmer (quoted, % escaped, as
# systemd.service(5) wants). Installed, never enabled: that is the user's call (README).
unit=share/systemd/user/stigmer.service
if [[ -f $src/$unit ]]; then
    abs_prefix=$(cd "$prefix" && pwd -P)
    if [[ $abs_prefix == *[\\\"$'\n']* ]]; then
        log "$unit not installed: the prefix $abs_prefix holds a quote, backslash or newline"
    else
        rendered=$(mktemp)
        trap 'rm -f "$rendered"' EXIT
        STIGMER_EXEC="\"${abs_prefix//%/%%}/bin/stigmer\" server --foreground" \
            awk '/^ExecStart=/ { print "ExecStart=" ENVIRON["STIGMER_EXEC"]; next } { print }' \
            "$src/$unit" > "$rendered"
        if ! cmp -s "$rendered" "$prefix/$unit"; then
            place 644 "$rendered" "$prefix/$unit"
            log "enable it with: systemctl --user enable --now stigmer (see README)"
        fi
    fi
fi

failed=0
for component in $("$prefix/bin/stigmer" --list); do
    link="$prefix/bin/$component"
    if [[ -L $link && $(readlink "$link") == stigmer ]]; then
        continue
    elif [[ -e $link || -L $link ]]; then
        log "$link exists and is not a link to stigmer: left alone (remove it and rerun)"
        failed=1
        continue
    fi
    ln -s stigmer "$link"
    log "linked $link -> stigmer"
done
exit "$failed"
