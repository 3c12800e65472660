#!/usr/bin/env bash
# The memfd holder's figures (issue 13), self-contained: a release build of the work tree (the
# contract's `cargo build --release`: static-pie on Linux, .cargo/rustc-static-pie) carrying probe and a 100 MiB padded probe,
# each also as NAME-c with runner = "cache". Prints markdown; the raw hyperfine JSON stays in
# target/bench/holder.
#
#  a. starts: direct vs memfd shared (a holder runs and holds the component) vs the warm cache,
#     for the small probe and the 100 MiB one, interleaved (BENCH_ROUNDS rounds, 1,000);
#  b. the first start (no holder: fill a private memfd, start the holder) vs the copy limit
#     (bench/exec-limit.c mmap: the bare C program that copies into a memfd and fexecve's it);
#  c. Shmem added by 1 and by 8 concurrent instances of the 100 MiB component via memfd, and by
#     8 via the cache.
#
# Environment: BENCH_ROUNDS (1000), BENCH_MIN_RUNS (30), HOLDER_TARGET_DIR (the cargo target dir,
# default target/bench/holder/t; bench.sh passes its cargo one, whose dependencies are built).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=$root/target/bench/holder
fixtures=$root/target/fixtures/components
min_runs=${BENCH_MIN_RUNS:-30}
log() { printf 'bench-holder: %s\n' "$*" >&2; }
command -v hyperfine >/dev/null || { log "hyperfine is required (apt-get install hyperfine)"; exit 1; }
mkdir -p "$out/bin" "$out/json" "$out/comps"
make -s fixtures >&2
gcc -O2 -static -o "$out/bin/exec-limit" bench/exec-limit.c
gcc -O2 -o "$out/bin/filler" tests/fixtures/filler.c

comps=$out/comps
# Copied only when changed: a new mtime would make cargo rebuild the binary.
put() { cmp -s "$1" "$2" || cp "$1" "$2"; }
put "$fixtures/probe" "$comps/probe"
put "$fixtures/probe" "$comps/probe-c"
if [[ ! -f $comps/big100 ]]; then
    { cat "$fixtures/probe"; "$out/bin/filler" 100; } > "$comps/big100.tmp"
    chmod 755 "$comps/big100.tmp"
    mv "$comps/big100.tmp" "$comps/big100"
fi
put "$comps/big100" "$comps/big100-c"
printf '[components.probe-c]\nrunner = "cache"\n[components.big100-c]\nrunner = "cache"\n' > "$comps/.toml"
put "$comps/.toml" "$comps/components.toml"
rm -f "$comps/.toml"

log "cargo build --release (work tree)"
target=${HOLDER_TARGET_DIR:-$root/target/bench/holder/t}
STIGMER_COMPONENTS_DIR=$comps CARGO_TARGET_DIR=$target cargo build --release >"$out/build.log" 2>&1 ||
    { tail -n 30 "$out/build.log" >&2; exit 1; }
stigmer=$out/bin/stigmer
rm -f "$stigmer" # a holder of an earlier run may still run it
cp "$target/release/stigmer" "$stigmer"
links=$out/links
rm -rf "$links" "$out/home"
mkdir -p "$links"
for n in probe probe-c big100 big100-c; do ln -s "$stigmer" "$links/$n"; done
export STIGMER_HOME=$out/home
unset STIGMER_RUNNER STIGMER_LOG STIGMER_FORCE_ARG0 STIGMER_MEMFD_HOLDER_IDLE
el=$out/bin/exec-limit

# The holder's pid as doctor proves it (SO_PEERCRED), or nothing.
holder_pid() { "$stigmer" doctor --json | python3 -c 'import json,sys; h=json.load(sys.stdin)["memfd_holder"]; print(h["pid"] if h else "")'; }
# Ends the holder; one that has not reached listen() yet is waited for: its lock says it exists.
kill_holder() {
    local pid lock
    for _ in $(seq 500); do
        pid=$(holder_pid)
        if [[ -n $pid ]]; then
            kill "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
            return 0
        fi
        lock=$(compgen -G "$STIGMER_HOME/run/memfd-*.lock" || true)
        [[ -z $lock ]] || flock -n "$lock" true && return 0
        sleep 0.01
    done
}
shared_of() { STIGMER_LOG=debug "$@" 2>&1 >/dev/null </dev/null | grep -o 'shared=[a-z]*' | head -n1; }

# warm the cache entries and the holder, and check each row takes the path it claims
for n in probe-c big100-c; do "$links/$n" >/dev/null; done
for n in probe big100; do
    "$links/$n" >/dev/null
    for _ in $(seq 100); do # the holder listens a moment after the start that made it
        got=$(shared_of "$links/$n")
        [[ $got == shared=true ]] && break
        sleep 0.05
    done
    [[ $got == shared=true ]] || { log "$n: $got, expected a shared memfd"; exit 1; }
done

hf() { local name=$1; shift; log "hyperfine $name (load $(cut -d' ' -f1-3 /proc/loadavg))"; hyperfine -N --output=null --export-json "$out/json/$name.json" "$@" >&2; }

# Interleaved (bench/interleave.py): "memfd no slower than the cache" compares rows ~0.05 ms
# apart, less than one-after-another hyperfine runs drift on a shared VM.
log "interleaved warm, ${BENCH_ROUNDS:-1000} rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
python3 bench/interleave.py --json "$out/json/warm.json" \
    -n "probe direct" -n "probe memfd shared" -n "probe cache" \
    -n "big100 direct" -n "big100 memfd shared" -n "big100 cache" \
    "${BENCH_ROUNDS:-1000}" "$comps/probe" "$links/probe" "$links/probe-c" \
    "$comps/big100" "$links/big100" "$links/big100-c" >&2

# First starts: the holder killed before each run (hyperfine --prepare is not timed).
export -f kill_holder holder_pid
export stigmer
hf first --warmup 2 --min-runs "$min_runs" \
    -n "big100 copy-limit" "$el mmap $comps/big100" \
    -n "probe copy-limit" "$el mmap $comps/probe" \
    --prepare "bash -c 'kill_holder || true'" \
    -n "big100 memfd first start" "$links/big100" \
    -n "probe memfd first start" "$links/probe"
kill_holder

log "Shmem of 1 and 8 instances"
python3 - "$links" "$out/json/shmem.json" <<'EOF'
import json, os, subprocess, sys, time
links, out = sys.argv[1:3]

def shmem():
    for line in open("/proc/meminfo"):
        if line.startswith("Shmem:"):
            return int(line.split()[1])

def start(name, n):
    env = dict(os.environ, PROBE_STDIN="1")
    procs = []
    for _ in range(n):
        p = subprocess.Popen([os.path.join(links, name)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        while not p.stdout.readline().startswith(b"pid="):  # then it blocks reading stdin
            pass
        procs.append(p)
    return procs

def stop(procs):
    for p in procs:
        p.stdin.close()
        p.stdout.read()
        p.wait()

# Shmem is machine-wide: the median of 5 repetitions keeps another process's memfd out.
res = {}
for name, counts in (("big100", (1, 8)), ("big100-c", (8,))):
    for n in counts:
        deltas = []
        for _ in range(5):
            base = shmem()
            procs = start(name, n)
            time.sleep(0.3)
            deltas.append(shmem() - base)
            stop(procs)
            if name == "big100":  # the holder keeps the copy: each repetition starts from none
                subprocess.run(["bash", "-c", "kill_holder"], check=True)
            time.sleep(0.3)
        res[f"{name} x{n}"] = sorted(deltas)[len(deltas) // 2]
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res), file=sys.stderr)
EOF

python3 - "$out/json" "$comps/big100" <<'EOF'
import json, os, statistics, sys
d, big = sys.argv[1:3]
rows = {}
for f in ("warm", "first"):
    for r in json.load(open(os.path.join(d, f + ".json")))["results"]:
        rows[r["command"]] = statistics.median(r["times"]) * 1000
sh = json.load(open(os.path.join(d, "shmem.json")))
one = os.path.getsize(big) / 1024
print("| start | median ms | vs direct |")
print("|---|---:|---:|")
for k in ("probe direct", "probe memfd shared", "probe cache", "big100 direct", "big100 memfd shared", "big100 cache"):
    base = rows[k.split()[0] + " direct"]
    print(f"| {k} | {rows[k]:.2f} | {rows[k] / base:.2f}x |")
print()
print("| first start | median ms | vs copy limit |")
print("|---|---:|---:|")
for n in ("probe", "big100"):
    lim = rows[f"{n} copy-limit"]
    print(f"| {n} copy-limit | {lim:.2f} | 1.00x |")
    print(f"| {n} memfd first start | {rows[n + ' memfd first start']:.2f} | {rows[n + ' memfd first start'] / lim:.2f}x |")
print()
print(f"| Shmem added | MiB | vs one copy ({one / 1024:.1f} MiB) |")
print("|---|---:|---:|")
for k, v in sh.items():
    print(f"| {k} | {v / 1024:.1f} | {v / one:.2f}x |")
EOF
