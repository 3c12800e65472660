#!/usr/bin/env bash
# The corpus rows of `make bench` (also alone: bench/corpus.sh): real third-party programs from
# tests/corpus/build.sh, embedded in a release stigmer.
#   - bun (102 MiB single-file ELF) `-e 1` (issue 13's workload) and `--version`: direct vs stigmer
#     stigmer with the default policy (the cache: bun is over the memfd size) vs stigmer warm cache vs a bare C program that
#     only execs it (bench/exec-limit execve: the floor of any launcher);
#   - yamllint (PyInstaller, PyYAML's C extension) `--version`: onedir vs onefile, direct and
#     through stigmer (both from the cache).
# Prints a markdown table; raw JSON goes to target/bench/run/json/corpus.json (hyperfine) and
# corpus-bun.json (bench/interleave.py). Environment: BENCH_WARMUP (5), BENCH_MIN_RUNS (20),
# BENCH_ROUNDS (300, the interleaved bun rows), BENCH_CORPUS_BIN (measure this corpus stigmer
# instead of building a release one).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=$root/target/bench/run
corpus=$root/target/corpus/components
mkdir -p "$out/bin" "$out/json"
gcc -O2 -static -o "$out/bin/exec-limit" bench/exec-limit.c
log() { printf 'bench: %s\n' "$*" >&2; }
command -v hyperfine >/dev/null || { log "installing hyperfine"; apt-get install -y hyperfine >&2; }

make -s corpus-components >&2
if [[ -n ${BENCH_CORPUS_BIN:-} ]]; then
    # An already built corpus stigmer (say make corpus's debug build), to measure without a
    # release build; say so next to the figures.
    rm -f "$out/bin/stigmer-corpus"
    cp "$BENCH_CORPUS_BIN" "$out/bin/stigmer-corpus"
    build_label="$BENCH_CORPUS_BIN"
else
    # The contract's build, in bench.sh's cargo target dir, so a full `make bench` shares its
    # compiled dependencies.
    log "build stigmer-corpus (cargo build --release)"
    t0=$SECONDS
    STIGMER_COMPONENTS_DIR=$corpus CARGO_TARGET_DIR=$out/t-cargo cargo build --release \
        >"$out/build-stigmer-corpus.log" 2>&1 || { tail -n 30 "$out/build-stigmer-corpus.log" >&2; exit 1; }
    rm -f "$out/bin/stigmer-corpus"
    cp "$out/t-cargo/release/stigmer" "$out/bin/stigmer-corpus"
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
check cache "$links/bun"  # the auto policy: over its memfd size
check cache "$links/bun-cache"
check cache "$links/yamllint"
check cache "$links/yamllint-onefile"

# bun interleaved (each command in turn, BENCH_ROUNDS rounds): its rows differ by less than
# hyperfine's one-after-another runs drift on a VM. yamllint (~0.2-0.5 s a start) through hyperfine.
log "interleaved bun rows, ${BENCH_ROUNDS:-300} rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
bun_rows=()
for a in "-e 1" "--version"; do
    for r in direct default cache "C execve"; do bun_rows+=(-n "bun $a $r"); done
done
python3 bench/interleave.py --json "$out/json/corpus-bun.json" "${bun_rows[@]}" "${BENCH_ROUNDS:-300}" \
    "$corpus/bun -e 1" "$links/bun -e 1" "$links/bun-cache -e 1" "$out/bin/exec-limit execve $corpus/bun -e 1" \
    "$corpus/bun --version" "$links/bun --version" "$links/bun-cache --version" \
    "$out/bin/exec-limit execve $corpus/bun --version" >&2
log "hyperfine corpus (load $(cut -d' ' -f1-3 /proc/loadavg))"
hyperfine -N --output=null --warmup "${BENCH_WARMUP:-5}" --min-runs "${BENCH_MIN_RUNS:-20}" \
    --export-json "$out/json/corpus.json" \
    -n "yamllint onedir direct" "$corpus/yamllint/yamllint --version" \
    -n "yamllint onedir stigmer" "$links/yamllint --version" \
    -n "yamllint onefile direct" "$corpus/yamllint-onefile --version" \
    -n "yamllint onefile stigmer" "$links/yamllint-onefile --version" >&2

python3 - "$out/json/corpus.json" "$out/json/corpus-bun.json" \
    "$(git rev-parse --short HEAD), $build_label, load $(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
rows = {r["command"]: r for f in sys.argv[1:3] for r in json.load(open(f))["results"]}
def ms(name):
    return rows[name]["median"] * 1e3, rows[name]["stddev"] * 1e3
# Issues 13 and 21: a 100 MiB-class ELF with the default policy (the cache, warm), at most 1.25x
# its direct start, with the issue's workload (`bun -e 1`).
# `--version` (bun at its quickest) is shown with the floor of any launcher: one more execve.
targets = {"bun -e 1 default": 1.25}
print(f"Corpus rows ({sys.argv[3]}; medians, σ; bun interleaved, yamllint hyperfine -N):\n")
print("| program | run | median ms (σ) | vs direct | target |")
print("|---|---|---:|---:|---|")
for prog, prefix, names in [
    *[(f"bun 1.4.4 (102 MiB ELF) {a}", f"bun {a} ", ["direct", "default", "cache", "C execve"]) for a in ("-e 1", "--version")],
    ("yamllint 1.38.0 (PyInstaller) --version", "yamllint ",
     ["onedir direct", "onedir stigmer", "onefile direct", "onefile stigmer"]),
]:
    b = ms(prefix + names[0])[0]
    for n in names:
        m, s = ms(prefix + n)
        t = targets.get(prefix + n)
        target = f"≤ {t}x {'✅' if m / b <= t else '❌'}" if t else ""
        print(f"| {prog} | {n} | {m:.1f} ({s:.1f}) | {m / b:.2f}x | {target} |")
PY
