#!/usr/bin/env bash
# Renders the Homebrew formula (packaging/homebrew/stigmer.rb.in) on stdout:
#   version       Cargo.toml's [package] version
#   components    one `bin.install_symlink "stigmer" => NAME` per [components.NAME] of
#                 packaging/components/components.toml (STIGMER_COMPONENTS overrides: "a b c")
#   checksums     from SUMS_DIR/stigmer-<version>-<target>.tar.gz.sha256 for the four release
#                 targets; without SUMS_DIR, 64 zeros (for the drift check in the tests)
#   urls          STIGMER_RELEASE_URL (default: the GitHub releases of STIGMER_REPO, stigmer/stigmer)
# Fails on a missing checksum file, a malformed checksum, or any placeholder left unrendered.
#
# Usage: packaging/scripts/formula.sh [SUMS_DIR] > stigmer.rb
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
sums=${1:-}
template="$root/packaging/homebrew/stigmer.rb.in"
die() { printf 'formula: %s\n' "$*" >&2; exit 1; }

targets=(aarch64-apple-darwin x86_64-apple-darwin aarch64-unknown-linux-gnu x86_64-unknown-linux-gnu)
version=$(awk '/^\[/{pkg = ($0 == "[package]")} pkg && /^version *=/{gsub(/.*= *"|".*/, ""); print; exit}' \
    "$root/Cargo.toml")
[[ -n $version ]] || die "no [package] version in Cargo.toml"
repo=${STIGMER_REPO:-stigmer/stigmer}
homepage="https://github.com/$repo"
release_url=${STIGMER_RELEASE_URL:-$homepage/releases/download}

components=${STIGMER_COMPONENTS:-$(sed -n 's/^\[components\.\([A-Za-z0-9._-]*\)\][[:space:]]*$/\1/p' \
    "$root/packaging/components/components.toml")}
[[ -n $components ]] || die "no [components.NAME] in packaging/components/components.toml"
links=""
for component in $components; do
    [[ $component =~ ^[A-Za-z0-9._-]+$ && $component != stigmer ]] || die "bad component name '$component'"
    links+="    bin.install_symlink \"stigmer\" => \"$component\""$'\n'
done

sed_args=(-e "s|@VERSION@|$version|g" -e "s|@HOMEPAGE@|$homepage|g" -e "s|@RELEASE_URL@|$release_url|g")
for target in "${targets[@]}"; do
    if [[ -n $sums ]]; then
        file="$sums/stigmer-$version-$target.tar.gz.sha256"
        [[ -f $file ]] || die "missing $file"
        sum=$(awk '{print $1; exit}' "$file")
    else
        sum=$(printf '0%.0s' {1..64})
    fi
    [[ $sum =~ ^[0-9a-f]{64}$ ]] || die "bad sha256 '$sum' for $target"
    sed_args+=(-e "s|@SHA256_$target@|$sum|g")
done

rendered=$(sed "${sed_args[@]}" "$template" | awk -v links="${links%$'\n'}" '$0 == "@INSTALL_SYMLINKS@" {print links; next} {print}')
leftover=$(grep -o '@[A-Za-z0-9_-]*@' <<<"$rendered" || true)
[[ -z $leftover ]] || die "unrendered placeholders: $leftover"
printf '%s\n' "$rendered"
