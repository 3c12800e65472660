#!/usr/bin/env bash
# `make bench`: every launcher figure of issue 5, measured side by side in one run, printed as
# markdown and written into docs/BENCHMARKS.md (between the bench:begin/end markers; the analysis
# around them is kept).
#
#  1. exec overhead: direct vs stigmer memfd vs stigmer warm cache for the C probe, a Go binary
#     (stigmer-server --version), the 50 MiB big-probe and a 100 MiB padded probe; the copy limit
#     (bench/exec-limit.c: mmap + write into a memfd + fexecve, and the sendfile variant) and the
#     exec limit (one more execve from a static C program);
#  2. the same Python app as PyInstaller onefile direct, onedir direct, onedir through stigmer;
#  3. first fill (empty STIGMER_HOME each run, fsync included) vs warm runs, per component;
#  4. compression none / zstd 1, 3, 9, 19 for a Go binary, an onedir tar and a onefile:
#     stored size, fill, memfd exec (Go);
#  5. fat binary vs raw components, launcher-only size;
#  6. `stigmer server` cold/warm start to all-ready, stop, supervisor RSS; 1 vs 20 independent notify
#     services (each READY=1 300 ms after it starts) to all-ready, stop, supervisor RSS;
#  7. memory of 8 running instances from memfd vs from the cache;
#  8. launcher link variants (dynamic PIE, static-pie, static non-PIE) on the small probe;
#  9. logs: a service printing 1,000,000 lines of 100 bytes, under the supervisor vs to a file;
# 10. the cache runner's own cost (bench/cache-start.sh): warm cache start vs the bare C stat+execve
#     floor for the `cargo build --release` binary, the Makefile's static-pie and the dynamic PIE
#     (`--target` without flags), warm start of an
#     8,700-file directory component vs a one-file one, its first fill vs tar -x + syncfs;
# 11. after the report: the runner threshold (bench/runner-threshold.sh) and the corpus
#     (bench/corpus.sh), printed.
#
# A failed repetition does not end the run: hyperfine runs with -i, the row is reported with its
# failures, and bench/exec-limit's messages (its stderr is discarded with the commands' output)
# are kept in target/bench/run/exec-limit.log.
#
# Builds (--release, from a snapshot of BENCH_REV, default HEAD, or of the work tree with
# BENCH_REV=worktree) go to target/bench/run/t-<kind>: `cargo` is the contract's plain `cargo build
# --release` (static-pie on Linux, through .cargo/rustc-static-pie), the link variants are built
# with --target x86_64-unknown-linux-gnu and their RUSTFLAGS (`dyn`: none, the dynamic PIE). The
# binaries are copied to target/bench/run/bin. Work files and raw hyperfine JSON: target/bench/run.
#
# Environment: BENCH_REV, BENCH_WARMUP (10), BENCH_MIN_RUNS (30), BENCH_FILL_RUNS (10),
# BENCH_SERVER_REPS (5), BENCH_LOGS_REPS (5), BENCH_VARIANTS ("dyn static-pie static"), BENCH_NO_DOCS=1 (do not
# touch docs/BENCHMARKS.md).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=$root/target/bench/run
fixtures=$root/target/fixtures/components
reference=$root/target/components
triple=x86_64-unknown-linux-gnu
warmup=${BENCH_WARMUP:-10}
min_runs=${BENCH_MIN_RUNS:-30}
fill_runs=${BENCH_FILL_RUNS:-10}
variants=${BENCH_VARIANTS:-dyn static-pie static}
mkdir -p "$out/bin" "$out/json"
log() { printf 'bench: %s\n' "$*" >&2; }

# Tools and inputs ---------------------------------------------------------------------------
for tool in hyperfine perf strace; do
    command -v "$tool" >/dev/null || { log "installing $tool"; apt-get install -y "$tool" >&2 || true; }
done
command -v hyperfine >/dev/null || { log "hyperfine is required (apt-get install hyperfine)"; exit 1; }
log "make fixtures components"
make -s fixtures components >&2

gcc -O2 -static -o "$out/bin/exec-limit" bench/exec-limit.c
gcc -O2 -o "$out/bin/filler" tests/fixtures/filler.c
gcc -O2 -o "$out/bin/lines" bench/lines.c

# Component sets ------------------------------------------------------------------------------
# write_if_changed SRC DEST: keeps DEST and its mtime when identical, so cargo does not rebuild.
write_if_changed() {
    if cmp -s "$1" "$2"; then rm -f "$1"; else mv -f "$1" "$2"; fi
}
put() { # SRC NAME DIR: copy a file or a tree as component NAME (a tree's entry point renamed)
    local src=$1 name=$2 dir=$3
    if [[ -d $src ]]; then
        local tmp=$dir/.$name.tmp
        rm -rf "$tmp"
        cp -a "$src" "$tmp"
        [[ $(basename "$src") == "$name" ]] || mv "$tmp/$(basename "$src")" "$tmp/$name"
        if diff -rq --no-dereference "$tmp" "$dir/$name" >/dev/null 2>&1; then rm -rf "$tmp"; else rm -rf "${dir:?}/$name"; mv "$tmp" "$dir/$name"; fi
    else
        cp "$src" "$dir/.$name.tmp"
        write_if_changed "$dir/.$name.tmp" "$dir/$name"
    fi
}

# small: the perf variants (probe via memfd, probe-c via the cache)
small=$out/comps-small
mkdir -p "$small"
put "$fixtures/probe" probe "$small"
put "$fixtures/probe" probe-c "$small"
printf '[components.probe-c]\nrunner = "cache"\n' > "$small/.toml"
write_if_changed "$small/.toml" "$small/components.toml"

# bench: everything else. NAME-c is NAME with runner = "cache" (identical payloads are stored once).
comps=$out/comps-bench
mkdir -p "$comps"
{ cat "$fixtures/probe"; "$out/bin/filler" 100; } > "$out/big100.tmp"
chmod 755 "$out/big100.tmp"
[[ -f $out/big100 ]] && cmp -s "$out/big100.tmp" "$out/big100" && rm "$out/big100.tmp" || mv -f "$out/big100.tmp" "$out/big100"
levels=(none 1 3 9 19)
{
    cat "$reference/components.toml"
    for n in probe big-probe big100 stigmer-server; do
        put "$( [[ $n == big100 ]] && echo "$out/big100" || echo "$fixtures/$n")" "$n" "$comps"
        put "$comps/$n" "$n-c" "$comps"
        printf '[components.%s-c]\nrunner = "cache"\n' "$n"
    done
    # The memfd rows of the big ones: the auto policy would send them to the cache.
    printf '[components.%s]\nrunner = "memfd"\n' big-probe big100
    put "$reference/workflow-runner" workflow-runner "$comps"
    put "$reference/agent-runner" agent-runner "$comps"
    put "$fixtures/pyapp" pyapp "$comps"
    put "$fixtures/pyapp-onefile" pyapp-onefile "$comps"
    for l in "${levels[@]}"; do
        put "$fixtures/stigmer-server" "go-z$l" "$comps"
        put "$fixtures/pyapp" "onedir-z$l" "$comps"
        put "$fixtures/pyapp-onefile" "onefile-z$l" "$comps"
        for k in go onedir onefile; do
            if [[ $l == none ]]; then
                printf '[components.%s-z%s]\ncompression = "none"\n' "$k" "$l"
            else
                printf '[components.%s-z%s]\ncompression = "zstd"\nlevel = %s\n' "$k" "$l" "$l"
            fi
            # Like the reference Go services: memfd at any size.
            [[ $k != go ]] || printf 'runner = "memfd"\n'
        done
    done
} > "$comps/.toml"
write_if_changed "$comps/.toml" "$comps/components.toml"

# Builds -----------------------------------------------------------------------------------------
src=$out/src
rev=${BENCH_REV:-HEAD}
if [[ $rev == worktree ]]; then
    rev_label="work tree of $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src build.rs Cargo.toml || echo ' + uncommitted changes')"
    mkdir -p "$src"
    rsync -a --delete --exclude /target --exclude /.git ./ "$src/"
else
    rev_label=$(git rev-parse --short "$rev")
    want=$(git rev-parse "$rev^{tree}")
    if [[ ! -f $src/.tree || $(cat "$src/.tree") != "$want" ]]; then
        rm -rf "$src"
        mkdir -p "$src"
        git archive "$rev" | tar -x -C "$src"
        echo "$want" > "$src/.tree"
    fi
fi

build() { # KIND COMPONENTS_DIR|"" OUTPUT_NAME
    local v=$1 dir=$2 name=$3 flags=
    case $v in
        cargo | dyn) flags= ;;
        static-pie) flags="-C target-feature=+crt-static" ;;
        static) flags="-C target-feature=+crt-static -C relocation-model=static" ;;
        *) log "unknown variant $v"; exit 1 ;;
    esac
    log "build $name: $v, components ${dir:-(none)}"
    local t0=$SECONDS
    (
        cd "$src"
        if [[ -n $dir ]]; then export STIGMER_COMPONENTS_DIR=$dir; else unset STIGMER_COMPONENTS_DIR; fi
        if [[ $v == cargo ]]; then
            # What the contract's build command gives: no RUSTFLAGS, no --target.
            unset RUSTFLAGS
            CARGO_TARGET_DIR=$out/t-$v cargo build --release >"$out/build-$name.log" 2>&1
        else
            RUSTFLAGS=$flags CARGO_TARGET_DIR=$out/t-$v cargo build --release --target $triple >"$out/build-$name.log" 2>&1
        fi
    ) || { tail -n 30 "$out/build-$name.log" >&2; log "build $name failed"; exit 1; }
    if [[ $v == cargo ]]; then cp "$out/t-$v/release/stigmer" "$out/bin/$name"; else cp "$out/t-$v/$triple/release/stigmer" "$out/bin/$name"; fi
    log "  $((SECONDS - t0)) s"
}
for v in $variants; do build "$v" "$small" "stigmer-$v"; done
build cargo "" stigmer-launcher
build cargo "$reference" stigmer-ref
build cargo "$comps" stigmer
cs=$out/comps-cache-start
bench/cache-start.sh components "$cs"
build cargo "$cs" stigmer-cs-cargo
build static-pie "$cs" stigmer-cs-static-pie
build dyn "$cs" stigmer-cs-dyn
stigmer=$out/bin/stigmer
"$stigmer" components --json > "$out/json/components.json"
"$out/bin/stigmer-ref" components --json > "$out/json/components-ref.json"

# Links and homes -------------------------------------------------------------------------------
links=$out/links
rm -rf "$links" "$out/home"
mkdir -p "$links"
for n in $("$stigmer" --list); do ln -s "$stigmer" "$links/$n"; done
for v in $variants; do
    mkdir -p "$links/$v"
    ln -s "$out/bin/stigmer-$v" "$links/$v/probe"
    ln -s "$out/bin/stigmer-$v" "$links/$v/probe-c"
done
export STIGMER_HOME=$out/home
unset STIGMER_RUNNER STIGMER_LOG STIGMER_FORCE_ARG0
runner_of() { STIGMER_LOG=debug "$@" 2>&1 >/dev/null </dev/null | grep -o 'runner=[a-z]*' | head -n1; }
check() { # WANT CMD...
    local got
    got=$(runner_of "${@:2}")
    [[ $got == "runner=$1" ]] || { log "$* took '$got', expected runner=$1"; exit 1; }
}
# fill the warm cache, and check every path takes the runner its row claims
for n in probe big-probe big100 stigmer-server go-znone go-z1 go-z3 go-z9 go-z19; do check memfd "$links/$n" --version; done
for n in probe-c big-probe-c big100-c stigmer-server-c pyapp pyapp-onefile; do check cache "$links/$n" --version; done
for v in $variants; do check memfd "$links/$v/probe"; check cache "$links/$v/probe-c"; done

hf() { # NAME [hyperfine options] -- then pairs of (label, command)
    local name=$1
    shift
    log "hyperfine $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
    # -i: a failed run is recorded (exit_codes in the JSON, flagged in the report), not the end.
    hyperfine -N -i --output=null --export-json "$out/json/$name.json" "$@" >&2
    python3 bench/measure.py failures "$out/json/$name.json" "$EXEC_LIMIT_LOG"
}
el=$out/bin/exec-limit
# Why exec-limit gave up, kept: hyperfine discards the commands' stderr.
export EXEC_LIMIT_LOG=$out/exec-limit.log
rm -f "$EXEC_LIMIT_LOG"
# Direct runs use the copies in comps-bench (identical bytes): the shared fixtures dir may be
# rebuilt by someone else during the run.
f=$comps

# 1 + 2: exec overhead ---------------------------------------------------------------------------------
hf exec --warmup "$warmup" --min-runs "$min_runs" \
    -n "probe direct" "$f/probe" \
    -n "probe execve-limit" "$el execve $f/probe" \
    -n "probe execveat-limit" "$el execveat $f/probe" \
    -n "probe copy-limit" "$el mmap $f/probe" \
    -n "probe sendfile-limit" "$el sendfile $f/probe" \
    -n "probe memfd" "$links/probe" \
    -n "probe cache" "$links/probe-c" \
    -n "go direct" "$f/stigmer-server --version" \
    -n "go copy-limit" "$el mmap $f/stigmer-server --version" \
    -n "go memfd" "$links/stigmer-server --version" \
    -n "go cache" "$links/stigmer-server-c --version" \
    -n "big50 direct" "$f/big-probe" \
    -n "big50 copy-limit" "$el mmap $f/big-probe" \
    -n "big50 sendfile-limit" "$el sendfile $f/big-probe" \
    -n "big50 memfd" "$links/big-probe" \
    -n "big50 cache" "$links/big-probe-c" \
    -n "big100 direct" "$f/big100" \
    -n "big100 copy-limit" "$el mmap $f/big100" \
    -n "big100 sendfile-limit" "$el sendfile $f/big100" \
    -n "big100 memfd" "$links/big100" \
    -n "big100 cache" "$links/big100-c" \
    -n "pyapp onedir direct" "$f/pyapp/pyapp" \
    -n "pyapp onedir stigmer" "$links/pyapp" \
    -n "pyapp onefile direct" "$f/pyapp-onefile"

# 8: link variants ---------------------------------------------------------------------------------------
vargs=()
for v in $variants; do
    vargs+=(-n "$v memfd" "$links/$v/probe" -n "$v cache" "$links/$v/probe-c")
done
hf variants --warmup "$warmup" --min-runs "$min_runs" \
    -n "probe direct" "$f/probe" \
    -n "probe execve-limit" "$el execve $f/probe" \
    -n "probe stat-limit" "$el stat $f/probe" \
    -n "probe sendfile-limit" "$el sendfile $f/probe" \
    "${vargs[@]}"

# 3 + 4: fills (an empty STIGMER_HOME before each run) and the same runs warm, all via the cache ---------------
fill_cmds=(
    -n "probe" "$links/probe --version"
    -n "big100" "$links/big100 --version"
    -n "stigmer-server" "$links/stigmer-server --version"
    -n "workflow-runner" "$links/workflow-runner --version"
    -n "agent-runner" "$links/agent-runner --version"
)
for l in "${levels[@]}"; do
    for k in go onedir onefile; do fill_cmds+=(-n "$k-z$l" "$links/$k-z$l --version"); done
done
export STIGMER_RUNNER=cache
hf fill --min-runs "$fill_runs" --max-runs "$fill_runs" --prepare "rm -rf $STIGMER_HOME/cache" "${fill_cmds[@]}"
hf warm --warmup 2 --min-runs "$fill_runs" --max-runs "$((fill_runs * 3))" "${fill_cmds[@]}"
unset STIGMER_RUNNER
# memfd exec of each compression level of the Go binary (the auto runner)
level_cmds=(-n "go direct" "$f/stigmer-server --version")
for l in "${levels[@]}"; do level_cmds+=(-n "go-z$l" "$links/go-z$l --version"); done
hf levels --warmup "$warmup" --min-runs "$min_runs" "${level_cmds[@]}"

# 10: the cache runner's own cost -----------------------------------------------------------------------------
BENCH_WARMUP=$warmup BENCH_MIN_RUNS=$min_runs BENCH_FILL_RUNS=$fill_runs \
    bench/cache-start.sh run "$out/cache-start" "$out/bin/stigmer-cs-cargo" "$out/bin/stigmer-cs-static-pie" \
        "$out/bin/stigmer-cs-dyn" "$cs"

# 5, 6, 7 and the report -----------------------------------------------------------------------------------------
log "server start/stop"
python3 bench/measure.py server "$out/bin/stigmer-ref" "$out/json/server.json" "${BENCH_SERVER_REPS:-5}"
log "server: 1 vs 20 notify services"
python3 bench/measure.py server-parallel "$out/bin/stigmer-ref" "$out/json/server-parallel.json" "${BENCH_SERVER_REPS:-5}"
log "logs: 1,000,000 lines under the supervisor"
python3 bench/measure.py logs "$out/bin/stigmer-ref" "$out/bin/lines" "$out/json/logs.json" "${BENCH_LOGS_REPS:-5}"
log "memory of two instances"
python3 bench/measure.py memory "$links" "$f/big100" "$out/json/memory.json"
docs=$root/docs/BENCHMARKS.md
[[ ${BENCH_NO_DOCS:-0} == 1 ]] && docs=
python3 bench/measure.py report "$out" "$rev_label" "$fixtures" "$reference" "${docs:-}"

# Where the auto policy's size threshold comes from (src/run/policy.rs): memfd vs cache per size,
# the 100 MiB probe with the default policy; built from the work tree in the cargo target dir.
STIGMER_FIXTURES=$fixtures THRESHOLD_TARGET_DIR=$out/t-cargo bench/runner-threshold.sh

# The corpus rows: real third-party programs (bun, yamllint as onedir and onefile), printed after
# the tables above (docs/BENCHMARKS.md, "Real programs").
BENCH_WARMUP=$warmup bench/corpus.sh
