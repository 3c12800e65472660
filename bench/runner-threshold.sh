#!/usr/bin/env bash
# Where the auto policy's size threshold comes from (src/run/policy.rs, MEMFD_MAX_BYTES), run by
# bench/bench.sh and on its own:
#
#   bench/runner-threshold.sh
#
# Builds a release stigmer (cargo build --release of the work tree, target dir
# $THRESHOLD_TARGET_DIR, default target/bench/threshold/t) embedding the C probe padded to
# SIZES MiB twice, as padN-m (runner = "memfd") and padN-c (runner = "cache"), and a 100 MiB
# padded probe with no runner setting (the default policy). Then, interleaved (bench/interleave.py,
# ROUNDS rounds, warm cache), it prints the median start of each size from a memfd and from the
# cache and their ratio, the 100 MiB probe with the default policy vs direct, the small probe via
# memfd vs the C memfd floor (bench/exec-limit mmap: memfd + write + seal + fexecve) and via the
# cache vs the C stat+execve floor. The threshold is the smallest size whose memfd start is slower
# than its cache start.
#
# Environment: BENCH_ROUNDS (300), BENCH_SIZES ("0 1 2 3 4 6 8 16 32"), THRESHOLD_TARGET_DIR,
# STIGMER_FIXTURES (the built fixtures, default target/fixtures/components: make fixtures).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/target/bench/threshold
fixtures=${STIGMER_FIXTURES:-$root/target/fixtures/components}
sizes=${BENCH_SIZES:-"0 1 2 3 4 6 8 16 32"}
rounds=${BENCH_ROUNDS:-300}
log() { printf 'runner-threshold: %s\n' "$*" >&2; }
mkdir -p "$out/bin" "$out/comps"

gcc -O2 -static -o "$out/bin/exec-limit" "$root/bench/exec-limit.c"
gcc -O2 -o "$out/bin/filler" "$root/tests/fixtures/filler.c"

# The component set, rewritten only where it changed (cargo then does not rebuild).
pad() { # MiB OUT
    { cat "$fixtures/probe"; [[ $1 == 0 ]] || "$out/bin/filler" "$1"; } > "$2.tmp"
    chmod 755 "$2.tmp"
    if cmp -s "$2.tmp" "$2"; then rm -f "$2.tmp"; else mv -f "$2.tmp" "$2"; fi
}
toml=
for s in $sizes; do
    pad "$s" "$out/comps/pad$s-m"
    pad "$s" "$out/comps/pad$s-c"
    toml+=$(printf '[components.pad%s-m]\nrunner = "memfd"\n[components.pad%s-c]\nrunner = "cache"\n' "$s" "$s")$'\n'
done
pad 100 "$out/comps/big100"
printf '%s' "$toml" > "$out/comps/.toml"
if cmp -s "$out/comps/.toml" "$out/comps/components.toml"; then rm "$out/comps/.toml"; else mv "$out/comps/.toml" "$out/comps/components.toml"; fi

target=${THRESHOLD_TARGET_DIR:-$out/t}
log "cargo build --release (target dir $target)"
(cd "$root" && STIGMER_COMPONENTS_DIR=$out/comps CARGO_TARGET_DIR=$target cargo build --release >"$out/build.log" 2>&1) ||
    { tail -n 30 "$out/build.log" >&2; exit 1; }
stigmer=$out/bin/stigmer
cp "$target/release/stigmer" "$stigmer"

links=$out/links
rm -rf "$links" "$out/home"
mkdir -p "$links"
for n in $("$stigmer" --list); do ln -s "$stigmer" "$links/$n"; done
export STIGMER_HOME=$out/home
unset STIGMER_RUNNER STIGMER_LOG STIGMER_FORCE_ARG0
runner_of() { STIGMER_LOG=debug "$1" 2>&1 >/dev/null </dev/null | grep -o 'runner=[a-z]*' | head -n1; }
check() { # WANT LINK: fills the cache, and proves the row's runner
    local got
    got=$(runner_of "$2")
    [[ $got == "runner=$1" ]] || { log "$2 took '$got', expected runner=$1"; exit 1; }
}
names=() cmds=()
for s in $sizes; do
    check memfd "$links/pad$s-m"
    check cache "$links/pad$s-c"
    names+=(-n "$s memfd" -n "$s cache")
    cmds+=("$links/pad$s-m" "$links/pad$s-c")
done
check cache "$links/big100"
cached=$(find "$STIGMER_HOME/cache" -path '*/pad0-c' -type f | head -n1)
first=${sizes%% *}
log "interleaved, $rounds rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 "$root/bench/interleave.py" --json "$out/threshold.json" \
    -n "probe direct" -n "C memfd floor" -n "C stat+execve floor" -n "100 direct" -n "100 default" \
    "${names[@]}" "$rounds" \
    "$out/comps/pad$first-m" "$out/bin/exec-limit mmap $out/comps/pad$first-m" "$out/bin/exec-limit stat $cached" \
    "$out/comps/big100" "$links/big100" "${cmds[@]}" >&2

python3 - "$out/threshold.json" "$sizes" "$(git -C "$root" rev-parse --short HEAD)" <<'PY'
import json, sys
rows = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
ms = lambda n: rows[n]["median"] * 1e3
sizes = sys.argv[2].split()
print(f"Runner threshold ({sys.argv[3]}, cargo build --release; interleaved medians, warm cache):\n")
print("| MiB | memfd ms | cache ms | memfd / cache |")
print("|---:|---:|---:|---:|")
over = None
for s in sizes:
    m, c = ms(f"{s} memfd"), ms(f"{s} cache")
    print(f"| {s} | {m:.2f} | {c:.2f} | {m / c:.2f}x |")
    if over is None and m > c:
        over = s
print(f"\nFirst size whose memfd start is slower than its cache start: {over} MiB")
print(f"\n| row | median ms | vs | ratio |")
print("|---|---:|---|---:|")
print(f"| 100 MiB probe, default policy (cache) | {ms('100 default'):.2f} | direct {ms('100 direct'):.2f} | "
      f"{ms('100 default') / ms('100 direct'):.2f}x |")
print(f"| small probe via memfd | {ms(sizes[0] + ' memfd'):.2f} | C memfd floor {ms('C memfd floor'):.2f} | "
      f"{ms(sizes[0] + ' memfd') / ms('C memfd floor'):.2f}x |")
print(f"| small probe via the cache | {ms(sizes[0] + ' cache'):.2f} | C stat+execve floor {ms('C stat+execve floor'):.2f} | "
      f"{ms(sizes[0] + ' cache') / ms('C stat+execve floor'):.2f}x |")
PY
