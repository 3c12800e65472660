#!/usr/bin/env bash
# Launcher overhead: runs each fixture component directly and through stigmer
# (memfd runner, warm cache runner) in one hyperfine invocation, then prints a
# markdown table of medians, overhead vs direct (ms) and ratio vs direct.
#
# Usage: bench/launcher.sh            (from anywhere; works in the repo root)
#   BENCH_WARMUP=N   hyperfine --warmup (default 20)
#   BENCH_RUNS=N     hyperfine --min-runs (default 50)
#   BENCH_SKIP_BUILD=1  use the existing target/release/stigmer as is
# Output: the table on stdout and in target/bench/launcher.md; hyperfine's own
# export in target/bench/launcher.json and target/bench/launcher.hyperfine.md.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
fixtures=$root/target/fixtures/components
stigmer=$root/target/release/stigmer
out=$root/target/bench
warmup=${BENCH_WARMUP:-20}
runs=${BENCH_RUNS:-50}
mkdir -p "$out"

log() { printf 'bench: %s\n' "$*" >&2; }

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "make fixtures"
    make fixtures >&2
    log "cargo build --release (STIGMER_COMPONENTS_DIR=$fixtures)"
    STIGMER_COMPONENTS_DIR=$fixtures cargo build --release >&2
fi

if ! command -v hyperfine >/dev/null; then
    log "installing hyperfine"
    apt-get install -y hyperfine >&2
fi

for f in probe big-probe pyapp/pyapp pyapp-onefile; do
    [[ -x $fixtures/$f ]] || { echo "bench: missing fixture $fixtures/$f (make fixtures)" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/stigmer-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
for name in probe probe-cached big-probe pyapp; do
    ln -s "$stigmer" "$tmp/bin/$name"
done
# Own STIGMER_HOME, so the user's cache is neither used nor touched.
export STIGMER_HOME=$tmp/home
unset STIGMER_RUNNER STIGMER_LOG STIGMER_FORCE_ARG0

# Pre-fill the cache (one run each) and check which runner each path takes.
STIGMER_RUNNER=cache "$tmp/bin/probe" >/dev/null
"$tmp/bin/probe-cached" >/dev/null
"$tmp/bin/pyapp" >/dev/null
"$stigmer" cache list >&2
check_runner() { # EXPECTED CMD...
    local want=$1 got
    shift
    got=$(STIGMER_LOG=debug "$@" 2>&1 >/dev/null | grep -o 'runner=[a-z]*' | head -n1)
    [[ $got == "runner=$want" ]] || { echo "bench: $* took '$got', expected runner=$want" >&2; exit 1; }
}
check_runner memfd "$tmp/bin/probe"
check_runner cache env STIGMER_RUNNER=cache "$tmp/bin/probe"
check_runner cache "$tmp/bin/probe-cached"
check_runner memfd "$tmp/bin/big-probe"
check_runner cache "$tmp/bin/pyapp"

# hyperfine has no per-command environment: the STIGMER_RUNNER=cache row goes
# through /usr/bin/env, so it is compared with the direct probe under env as well.
# probe-cached is the same probe.c (16.5 KiB) marked runner = "cache" in the
# fixtures' components.toml: the cache path without the extra exec of env.
envbin=$(command -v env)
names=(); cmds=()
add() { names+=("$1"); cmds+=("$2"); }
add "probe: direct"                        "$fixtures/probe"
add "probe: stigmer memfd"                 "$tmp/bin/probe"
add "probe: stigmer warm cache (probe-cached, runner=cache in toml)" "$tmp/bin/probe-cached"
add "probe: direct under env"              "$envbin $fixtures/probe"
add "probe: env STIGMER_RUNNER=cache stigmer" "$envbin STIGMER_RUNNER=cache $tmp/bin/probe"
add "big-probe (50 MiB): direct"           "$fixtures/big-probe"
add "big-probe (50 MiB): stigmer memfd"    "$tmp/bin/big-probe"
add "pyapp onedir: direct"                 "$fixtures/pyapp/pyapp"
add "pyapp onedir: stigmer warm cache"     "$tmp/bin/pyapp"
add "pyapp-onefile: direct"                "$fixtures/pyapp-onefile"

args=()
for i in "${!cmds[@]}"; do
    args+=(--command-name "${names[$i]}" "${cmds[$i]}")
done

log "load before: $(cat /proc/loadavg)"
hyperfine -N --warmup "$warmup" --min-runs "$runs" --output=null \
    --export-json "$out/launcher.json" --export-markdown "$out/launcher.hyperfine.md" \
    "${args[@]}" >&2
log "load after: $(cat /proc/loadavg)"

python3 - "$out/launcher.json" "$out/launcher.md" <<'EOF'
import json, platform, subprocess, sys, os
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
# (row, baseline) pairs: each row is compared with running the same thing directly.
base = {
    "probe: stigmer memfd": "probe: direct",
    "probe: stigmer warm cache (probe-cached, runner=cache in toml)": "probe: direct",
    "probe: env STIGMER_RUNNER=cache stigmer": "probe: direct under env",
    "big-probe (50 MiB): stigmer memfd": "big-probe (50 MiB): direct",
    "pyapp onedir: stigmer warm cache": "pyapp onedir: direct",
    "pyapp-onefile: direct": "pyapp onedir: direct",
}
ms = lambda s: s * 1000
lines = [
    "| command | median ms | mean ± σ ms | runs | baseline | overhead ms (median) | ratio (median) |",
    "|---|---:|---:|---:|---|---:|---:|",
]
for name, r in res.items():
    b = base.get(name)
    if b:
        over = f"{ms(r['median'] - res[b]['median']):+.2f}"
        ratio = f"{r['median'] / res[b]['median']:.2f}x"
    else:
        b, over, ratio = "-", "-", "1.00x"
    lines.append(f"| {name} | {ms(r['median']):.2f} | {ms(r['mean']):.2f} ± {ms(r['stddev']):.2f} "
                 f"| {len(r['times'])} | {b} | {over} | {ratio} |")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
hf = subprocess.run(["hyperfine", "--version"], capture_output=True, text=True).stdout.strip()
lines += ["", f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, {hf}, "
          f"load average at end {open('/proc/loadavg').read().split()[0:3]}.",
          "pyapp-onefile's baseline is the onedir app run directly (onefile vs onedir)."]
text = "\n".join(lines) + "\n"
open(sys.argv[2], "w").write(text)
print(text, end="")
EOF
