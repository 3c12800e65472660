#!/usr/bin/env bash
# The cache runner's own cost (issue 13), run by bench/bench.sh and on its own:
#
#   bench/cache-start.sh components DIR        writes the component set both binaries embed:
#       probe-c (the C probe, runner = "cache"), dir1 (a directory holding only the probe as its
#       entry point) and dir8700 (the same entry point and 8,699 more files in 725 directories,
#       ~70 MiB, like a site-packages tree); directories stored uncompressed, so the first fill
#       compares with tar -x of the same tree
#   bench/cache-start.sh run OUT CARGO STATIC DYN DIR
#                                              measures, writing hyperfine JSON into OUT/json:
#       cache-floor  warm cache start of probe-c through CARGO (`cargo build --release`: static-pie
#                    on Linux, .cargo/rustc-static-pie), STATIC (the Makefile's static-pie
#                    release build) and DYN (`cargo build --release --target HOST`, no flags: the
#                    dynamic PIE) vs the bare C floor (bench/exec-limit stat: lstat + execve of
#                    the cached file), the same C linked dynamically (the dynamic loader's
#                    share), and direct; interleaved (bench/interleave.py), not hyperfine
#       dirs-root    warm starts of dir1 and dir8700 through CARGO and STATIC as root (who may
#                    write whatever the modes say; the start checks what an ordinary user's does)
#       dirs-user    the same as nobody (65534), an ordinary user: the start checks the top of
#                    the read-only tree and its entry point only
#       dir-fill     first start of dir8700 (empty cache) vs `tar -x` + syncfs of the same tree
#   then `python3 bench/measure.py cache-start OUT` prints the table.
#
# Environment: BENCH_WARMUP (10), BENCH_MIN_RUNS (30), BENCH_FILL_RUNS (10), as bench.sh;
# BENCH_ROUNDS (1000), the rounds of the interleaved cache-floor rows.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'cache-start: %s\n' "$*" >&2; }

components() {
    local dir=$1 probe=$root/target/fixtures/components/probe
    [[ -x $probe ]] || { log "no $probe: run make fixtures first"; exit 1; }
    mkdir -p "$dir"
    cmp -s "$probe" "$dir/probe-c" || cp "$probe" "$dir/probe-c"
    for n in dir1 dir8700; do
        if [[ ! -x $dir/$n/$n ]] || ! cmp -s "$probe" "$dir/$n/$n"; then
            rm -rf "${dir:?}/$n" "$dir/.$n.tmp"
            mkdir -p "$dir/.$n.tmp"
            cp "$probe" "$dir/.$n.tmp/$n"
            # 725 directories of 12 files (8,700 with the entry point), sizes 1..16 KiB.
            [[ $n == dir8700 ]] && python3 - "$dir/.$n.tmp" <<'PY'
import os, random, sys
rng = random.Random(13)
left = 8699
for d in range(725):
    pkg = os.path.join(sys.argv[1], "site-packages", f"pkg{d // 25:02}", f"mod{d:03}")
    os.makedirs(pkg)
    for f in range(min(12, left)):
        with open(os.path.join(pkg, f"f{f:02}.py"), "wb") as out:
            out.write(rng.randbytes(rng.randint(1, 16) * 1024))
    left -= min(12, left)
PY
            mv "$dir/.$n.tmp" "$dir/$n"
        fi
    done
    local toml
    toml=$(printf '[components.probe-c]\nrunner = "cache"\n[components.dir1]\ncompression = "none"\n[components.dir8700]\ncompression = "none"\n')
    [[ -f $dir/components.toml && $(cat "$dir/components.toml") == "$toml" ]] || printf '%s\n' "$toml" > "$dir/components.toml"
    log "components in $dir: $(find "$dir/dir8700" -type f | wc -l) files in dir8700"
}

run() {
    local out=$1 cargo=$2 static=$3 dyn=$4 src=$5
    local warmup=${BENCH_WARMUP:-10} min_runs=${BENCH_MIN_RUNS:-30} fill_runs=${BENCH_FILL_RUNS:-10}
    mkdir -p "$out/json" "$out/bin"
    local el=$out/bin/exec-limit
    gcc -O2 -static -o "$el" "$root/bench/exec-limit.c"
    # The same floor linked dynamically: what the dynamic loader alone costs any program.
    gcc -O2 -o "$out/bin/exec-limit-dyn" "$root/bench/exec-limit.c"
    # Every binary and link where nobody can read it: /tmp, not target/.
    local w
    w=$(mktemp -d /tmp/stigmer-cache-start.XXXXXX)
    chmod 755 "$w"
    trap 'rm -rf "$w"' RETURN
    cp "$cargo" "$w/stigmer-cargo"
    cp "$static" "$w/stigmer-static"
    cp "$dyn" "$w/stigmer-dyn"
    mkdir -p "$w/cargo" "$w/static" "$w/dyn" "$w/direct"
    for n in probe-c dir1 dir8700; do
        ln -s "$w/stigmer-cargo" "$w/cargo/$n"
        ln -s "$w/stigmer-static" "$w/static/$n"
    done
    ln -s "$w/stigmer-dyn" "$w/dyn/probe-c"
    cp "$root/target/fixtures/components/probe" "$w/direct/probe"
    export EXEC_LIMIT_LOG=$out/exec-limit.log
    hf() { # NAME [hyperfine args]: -i so one failed run is a reported row, not the end
        local name=$1
        shift
        log "hyperfine $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
        hyperfine -N -i --output=null --export-json "$out/json/$name.json" "$@" >&2
    }
    unset STIGMER_RUNNER STIGMER_LOG STIGMER_FORCE_ARG0

    # Warm caches as root, one home per binary (the cached file is the same probe).
    export STIGMER_HOME=$w/home-root
    for v in cargo static; do "$w/$v/probe-c" >/dev/null; "$w/$v/dir1" >/dev/null; "$w/$v/dir8700" >/dev/null; done
    "$w/dyn/probe-c" >/dev/null
    local cached
    cached=$(find "$STIGMER_HOME/cache" -path '*/probe-c' -type f | head -n1)
    # Interleaved (each command in turn, BENCH_ROUNDS rounds): the ratios to the floor are what
    # the figure is, and hyperfine's one-command-after-another runs drift on a VM by more than
    # the differences between these rows.
    log "interleaved cache-floor, ${BENCH_ROUNDS:-1000} rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
    python3 "$root/bench/interleave.py" --json "$out/json/cache-floor.json" \
        -n "probe direct" -n "stat+execve floor" -n "stat+execve floor, dynamic C" \
        -n "cargo build --release" -n "make build (static-pie)" -n "dynamic PIE (--target, no flags)" \
        "${BENCH_ROUNDS:-1000}" "$w/direct/probe" "$el stat $cached" "$out/bin/exec-limit-dyn stat $cached" \
        "$w/cargo/probe-c" "$w/static/probe-c" "$w/dyn/probe-c" >&2
    hf dirs-root --warmup "$warmup" --min-runs "$min_runs" \
        -n "dir1 cargo" "$w/cargo/dir1" -n "dir8700 cargo" "$w/cargo/dir8700" \
        -n "dir1 make" "$w/static/dir1" -n "dir8700 make" "$w/static/dir8700"

    # The same as nobody, in a home of its own.
    mkdir -p "$w/home-user" "$w/json"
    chown 65534:65534 "$w/home-user" "$w/json"
    chmod 700 "$w/home-user"
    local as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups env STIGMER_HOME="$w/home-user" EXEC_LIMIT_LOG=)
    for v in cargo static; do "${as_nobody[@]}" "$w/$v/dir1" >/dev/null; "${as_nobody[@]}" "$w/$v/dir8700" >/dev/null; done
    log "hyperfine dirs-user, as nobody (load $(cut -d' ' -f1-3 /proc/loadavg))"
    "${as_nobody[@]}" hyperfine -N -i --output=null --export-json "$w/json/dirs-user.json" \
        --warmup "$warmup" --min-runs "$min_runs" \
        -n "dir1 cargo" "$w/cargo/dir1" -n "dir8700 cargo" "$w/cargo/dir8700" \
        -n "dir1 make" "$w/static/dir1" -n "dir8700 make" "$w/static/dir8700" >&2
    cp "$w/json/dirs-user.json" "$out/json/"

    # First fill vs tar -x + syncfs of the same tree (uncompressed tar, page cache warm).
    tar -cf "$w/dir8700.tar" -C "$src" dir8700
    export STIGMER_HOME=$w/home-fill
    hf dir-fill --min-runs "$fill_runs" --max-runs "$fill_runs" \
        --prepare "rm -rf $w/home-fill $w/untar" \
        -n "stigmer first start" "$w/cargo/dir8700" \
        -n "tar -x + syncfs" "bash -c 'mkdir $w/untar && tar -xf $w/dir8700.tar -C $w/untar && sync -f $w/untar'"
    python3 "$root/bench/measure.py" failures "$out/json" "$out/exec-limit.log"
}

case ${1:-} in
    components) components "$2" ;;
    run) run "$2" "$3" "$4" "$5" "$6" ;;
    *) sed -n '2,26p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
