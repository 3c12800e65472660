#!/usr/bin/env bash
# The corpus rows of `make bench` (also alone: bench/corpus.sh): real third-party programs from
# tests/corpus/build.sh, embedded in a release stigmer.
#   - bun (102 MiB single-file ELF) `--version`: direct vs stigmer memfd (shared by the holder
#     after the warm-up) vs stigmer warm cache;
#   - yamllint (PyInstaller, PyYAML's C extension) `--version`: onedir vs onefile, direct and
#     through stigmer (both from the cache).
# Prints a markdown table; raw hyperfine JSON goes to target/bench/run/json/corpus.json.
# Environment: BENCH_WARMUP (5), BENCH_MIN_RUNS (20), BENCH_CORPUS_BIN (measure this corpus stigmer
# instead of building a release one).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=$root/target/bench/run
corpus=$root/target/corpus/components
triple=x86_64-unknown-linux-gnu
mkdir -p "$out/bin" "$out/json"
log() { printf 'bench: %s\n' "$*" >&2; }
command -v hyperfine >/dev/null || { log "installing hyperfine"; apt-get install -y hyperfine >&2; }

make -s corpus-components >&2
if [[ -n ${BENCH_CORPUS_BIN:-} ]]; then
    # An already built corpus stigmer (say make corpus's debug build), to measure without a
    # release build; say so next to the figures.
    cp "$BENCH_CORPUS_BIN" "$out/bin/stigmer-corpus"
    build_label="$BENCH_CORPUS_BIN"
else
    # The same target dir and flags as bench.sh's dyn variant, so a full `make bench` shares its
    # compiled dependencies.
    log "build stigmer-corpus (release, dyn)"
    t0=$SECONDS
    STIGMER_COMPONENTS_DIR=$corpus CARGO_TARGET_DIR=$out/t-dyn cargo build --release --target $triple \
        >"$out/build-stigmer-corpus.log" 2>&1 || { tail -n 30 "$out/build-stigmer-corpus.log" >&2; exit 1; }
    cp "$out/t-dyn/$triple/release/stigmer" "$out/bin/stigmer-corpus"
    log "  $((SECONDS - t0)) s"
    build_label="release build"
fi

links=$out/corpus-links
rm -rf "$links" "$out/corpus-home"
mkdir -p "$links"
for n in bun bun-cache yamllint yamllint-onefile; do ln -s "$out/bin/stigmer-corpus" "$links/$n"; done
export STIGMER_HOME=$out/corpus-home
unset STIGMER_RUNNER STIGMER_LOG STIGMER_FORCE_ARG0
check() { # WANT LINK: the row's runner is the one it claims (this also fills the cache)
    local got
    got=$(STIGMER_LOG=debug "$2" --version 2>&1 >/dev/null </dev/null | grep -o 'runner=[a-z]*' | head -n1)
    [[ $got == "runner=$1" ]] || { log "$2 took '$got', expected runner=$1"; exit 1; }
}
check memfd "$links/bun"
check cache "$links/bun-cache"
check cache "$links/yamllint"
check cache "$links/yamllint-onefile"

log "hyperfine corpus (load $(cut -d' ' -f1-3 /proc/loadavg))"
hyperfine -N --output=null --warmup "${BENCH_WARMUP:-5}" --min-runs "${BENCH_MIN_RUNS:-20}" \
    --export-json "$out/json/corpus.json" \
    -n "bun direct" "$corpus/bun --version" \
    -n "bun memfd" "$links/bun --version" \
    -n "bun cache" "$links/bun-cache --version" \
    -n "yamllint onedir direct" "$corpus/yamllint/yamllint --version" \
    -n "yamllint onedir stigmer" "$links/yamllint --version" \
    -n "yamllint onefile direct" "$corpus/yamllint-onefile --version" \
    -n "yamllint onefile stigmer" "$links/yamllint-onefile --version" >&2

python3 - "$out/json/corpus.json" "$(git rev-parse --short HEAD), $build_label, load $(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
rows = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
def ms(name):
    return rows[name]["median"] * 1e3, rows[name]["stddev"] * 1e3
# Issue 13: a 100 MiB-class ELF through memfd, once loaded (the holder keeps its sealed memfd
# from the warm-up on), at most 1.25x its direct start.
targets = {"bun memfd": 1.25}
print(f"Corpus rows ({sys.argv[2]}; hyperfine -N, median, σ):\n")
print("| program | run | median ms (σ) | vs direct | target |")
print("|---|---|---:|---:|---|")
for prog, base, names in [
    ("bun 1.4.4 (102 MiB ELF) --version", "bun direct", ["bun direct", "bun memfd", "bun cache"]),
    ("yamllint 1.38.0 (PyInstaller) --version", "yamllint onedir direct",
     ["yamllint onedir direct", "yamllint onedir stigmer", "yamllint onefile direct", "yamllint onefile stigmer"]),
]:
    b = ms(base)[0]
    for n in names:
        m, s = ms(n)
        t = targets.get(n)
        target = f"≤ {t}x {'✅' if m / b <= t else '❌'}" if t else ""
        print(f"| {prog} | {n.split(' ', 1)[1]} | {m:.1f} ({s:.1f}) | {m / b:.2f}x | {target} |")
PY
