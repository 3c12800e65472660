#!/usr/bin/env bash
# Packs a built stigmer into the release tarball, exactly as the release workflow does:
#   OUTDIR/stigmer-<version>-<target>.tar.gz   holding stigmer-<version>-<target>/
#       bin/stigmer, bin/<component> -> stigmer (one relative link per `stigmer --list` name),
#       share/man/man1/stigmer.1, bash/zsh/fish completions,
#       share/systemd/user/stigmer.service (Type=notify user unit), README.md, install.sh
#   OUTDIR/stigmer-<version>-<target>.tar.gz.sha256   (sha256sum format)
# Prints the tarball's path on stdout.
#
# Usage: packaging/scripts/dist.sh [BINARY [OUTDIR]]
#   BINARY  default target/release/stigmer (env STIGMER_BINARY)
#   OUTDIR  default target/dist (env STIGMER_DIST_DIR)
#   STIGMER_TARGET overrides the target triple (default: rustc's host triple).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
binary=${1:-${STIGMER_BINARY:-$root/target/release/stigmer}}
outdir=${2:-${STIGMER_DIST_DIR:-$root/target/dist}}
log() { printf 'dist: %s\n' "$*" >&2; }

[[ -x $binary ]] || { log "no executable stigmer at $binary: run 'make build' first"; exit 1; }

# The [package] version of Cargo.toml, the one the binary and the formula carry.
version=$(awk '/^\[/{pkg = ($0 == "[package]")} pkg && /^version *=/{gsub(/.*= *"|".*/, ""); print; exit}' \
    "$root/Cargo.toml")
[[ -n $version ]] || { log "no [package] version in $root/Cargo.toml"; exit 1; }
target=${STIGMER_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
[[ -n $target ]] || { log "cannot tell the target triple: set STIGMER_TARGET"; exit 1; }
name="stigmer-$version-$target"

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
stage=$(mktemp -d "$outdir/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
top="$stage/$name"
mkdir -p "$top/bin" "$top/share/man/man1" "$top/share/bash-completion/completions" \
    "$top/share/zsh/site-functions" "$top/share/fish/vendor_completions.d" "$top/share/systemd/user"

cp "$binary" "$top/bin/stigmer"
chmod 755 "$top/bin/stigmer"
# Run the staged copy: what is listed is what the tarball carries.
stigmer="$top/bin/stigmer"
components=$("$stigmer" --list)
for component in $components; do
    ln -s stigmer "$top/bin/$component"
done
"$stigmer" generate man > "$top/share/man/man1/stigmer.1"
"$stigmer" generate completions bash > "$top/share/bash-completion/completions/stigmer"
"$stigmer" generate completions zsh > "$top/share/zsh/site-functions/_stigmer"
"$stigmer" generate completions fish > "$top/share/fish/vendor_completions.d/stigmer.fish"
install -m 644 "$root/packaging/systemd/stigmer.service" "$top/share/systemd/user/stigmer.service"
cp "$root/README.md" "$top/README.md"
install -m 755 "$root/packaging/scripts/install.sh" "$top/install.sh"

# macOS: the binary must carry a valid signature, and signing comes last (nothing may be appended
# to a signed Mach-O). The linker's ad-hoc signature normally holds; re-sign ad-hoc only if not.
if [[ $(uname -s) == Darwin ]] && ! codesign --verify --strict "$stigmer" 2>/dev/null; then
    log "codesign --sign - (ad-hoc) bin/stigmer"
    codesign --force --sign - "$stigmer"
fi

# Reproducible archive where the tar allows it: sorted, root-owned, one mtime.
tarball="$name.tar.gz"
mtime=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
if tar --version 2>/dev/null | grep -q GNU; then
    tar_flags=(--sort=name --owner=0 --group=0 --numeric-owner "--mtime=@$mtime")
else
    tar_flags=(--uid 0 --gid 0 --uname root --gname root)
fi
tar -C "$stage" "${tar_flags[@]}" -cf - "$name" | gzip -n > "$stage/$tarball"
mv -f "$stage/$tarball" "$outdir/$tarball"

if command -v sha256sum >/dev/null; then
    (cd "$outdir" && sha256sum "$tarball") > "$stage/sum"
else
    (cd "$outdir" && shasum -a 256 "$tarball") > "$stage/sum"
fi
mv -f "$stage/sum" "$outdir/$tarball.sha256"
log "$outdir/$tarball ($(wc -c < "$outdir/$tarball" | tr -d ' ') bytes, components: $(echo $components))"
echo "$outdir/$tarball"
