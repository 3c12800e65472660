#!/usr/bin/env bash
# Checks that the release build is reproducible: builds target/release/stigmer twice (`make build`),
# from two copies of the sources (the tracked files as they are in the work tree) in two
# directories of different names and depths, each with a fresh target dir, embedding the same
# components; then compares the two binaries bit for bit. On a mismatch it names the ELF sections
# that differ and exits 1. Slow: two clean release builds.
#
# Usage: packaging/scripts/repro.sh COMPONENTS_DIR
#   STIGMER_REPRO_DIR  where the two copies go (default target/repro; emptied first)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
log() { printf 'repro: %s\n' "$*" >&2; }
[[ $# -eq 1 && -d $1 ]] || { log "usage: $0 COMPONENTS_DIR (a directory of components)"; exit 2; }
components=$(cd "$1" && pwd)
work=${STIGMER_REPRO_DIR:-$root/target/repro}

rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
# Different names and depths: a path that leaks into the binary shows up as a difference.
copies=("$work/one/stigmer" "$work/second-build/nested/stigmer-src")
# Both copies first, from one snapshot: the work tree may change during the long builds.
snapshot="$work/sources.tar"
(cd "$root" && git ls-files -z --cached | tar --null -T - -cf "$snapshot")
for src in "${copies[@]}"; do
    mkdir -p "$src"
    tar -xf "$snapshot" -C "$src"
done
for src in "${copies[@]}"; do
    log "building in $src"
    # A fresh target dir each (the copy's own target/), the same components.
    env -u CARGO_TARGET_DIR make -C "$src" --no-print-directory build COMPONENTS="$components" >&2
done

a=${copies[0]}/target/release/stigmer
b=${copies[1]}/target/release/stigmer
sha() { sha256sum "$1" | cut -d' ' -f1; }
log "$(sha "$a")  $a"
log "$(sha "$b")  $b"
if cmp -s "$a" "$b"; then
    log "identical: the release build is reproducible"
    exit 0
fi
log "the two builds differ"
python3 - "$a" "$b" >&2 <<'EOF'
# Names the ELF sections whose contents differ (and sections only one side has).
import struct, sys

def sections(path):
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        sys.exit(f"{path}: not a 64-bit ELF file")
    end = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    heads = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = heads[shstrndx]
    def name(off):
        start = strtab[4] + off
        return data[start:data.index(b"\0", start)].decode()
    out = {}
    for h in heads:
        nobits = h[1] == 8
        out[name(h[0])] = (h[5], b"" if nobits else data[h[4]:h[4] + h[5]])
    return out

a, b = sections(sys.argv[1]), sections(sys.argv[2])
for n in sorted(set(a) | set(b)):
    if n not in a or n not in b:
        print(f"  section {n or '(null)'}: only in {'the first' if n in a else 'the second'} build")
    elif a[n] != b[n]:
        print(f"  section {n}: differs (size {a[n][0]} vs {b[n][0]})")
EOF
exit 1
