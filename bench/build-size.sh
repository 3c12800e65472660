#!/usr/bin/env bash
# Build cost of embedding ~100 MB of components, and the size of the result.
#
#  (a) stigmer's release build with ~100 MB of components (two padded copies of the
#      C probe + the PyInstaller onedir pyapp), in its own CARGO_TARGET_DIR, from a
#      warm dependency cache, after a component changed (build.rs reruns, the crate
#      recompiles and re-links). Wall time and peak RSS, BENCH_REPS times, median.
#  (b) the same payload.bin (what build.rs produced in (a)) embedded by a throwaway
#      crate with include_bytes! and with a global_asm! .incbin, each in the default
#      release profile and in stigmer's (thin LTO, 4 codegen units, panic=abort).
#
# Peak RSS is GNU time's "Maximum resident set size" of `cargo build`: wait4()'s
# ru_maxrss of the cargo process, which covers its waited-for descendants (rustc,
# the linker under it, build scripts) as the MAX over the single largest process,
# not the sum of processes alive at once. A RUSTC_WRAPPER also logs every rustc's
# own peak (linker included, as rustc waits for it) to attribute it.
#
# Usage: bench/build-size.sh     (BENCH_REPS=N, default 3)
# Output: tables on stdout and in target/bench/build-size.md; work files under
# target/bench/ (components100, target, incbytes, incbin).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
fixtures=$root/target/fixtures/components
out=$root/target/bench
comps=$out/components100
reps=${BENCH_REPS:-3}
pad_mib=45
mkdir -p "$out"
log() { printf 'bench: %s\n' "$*" >&2; }

if [[ ! -x /usr/bin/time ]]; then
    log "installing time"
    apt-get install -y time >&2
fi
log "make fixtures"
make fixtures >&2

# Components ------------------------------------------------------------------
# write_if_changed SRC DEST: keeps DEST (and its mtime) when identical.
write_if_changed() {
    if cmp -s "$1" "$2"; then rm -f "$1"; else chmod 755 "$1"; mv -f "$1" "$2"; fi
}
# padded_probe NAME SEED: the probe ELF followed by $pad_mib MiB of seeded
# pseudo-random bytes (Python's Mersenne Twister: deterministic per seed).
padded_probe() {
    { cat "$fixtures/probe"
      python3 -c 'import random, sys; sys.stdout.buffer.write(random.Random(int(sys.argv[1])).randbytes(int(sys.argv[2]) << 20))' "$2" "$pad_mib"
    } > "$comps/.$1.tmp"
    write_if_changed "$comps/.$1.tmp" "$comps/$1"
}
mkdir -p "$comps"
padded_probe probe-a 1
padded_probe probe-b 2
if ! diff -rq --no-dereference "$fixtures/pyapp" "$comps/pyapp" >/dev/null 2>&1; then
    rm -rf "$comps/pyapp"
    cp -a "$fixtures/pyapp" "$comps/pyapp"
fi
raw_files=$(( $(stat -c %s "$comps/probe-a") + $(stat -c %s "$comps/probe-b") ))
raw_pyapp=$(find "$comps/pyapp" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
raw_total=$((raw_files + raw_pyapp))

# (a) stigmer -----------------------------------------------------------------
# Build a snapshot of a commit (BENCH_REV, default HEAD), not the work tree, so
# edits in progress elsewhere in the checkout neither break nor skew the builds.
rev=$(git rev-parse --short "${BENCH_REV:-HEAD}")
src=$out/src
rm -rf "$src"
mkdir -p "$src"
git archive "$rev" | tar -x -C "$src"
export CARGO_TARGET_DIR=$out/target
export STIGMER_COMPONENTS_DIR=$comps
wrapper=$out/rustc-time-wrapper.sh
cat > "$wrapper" <<'EOF'
#!/bin/sh
# RUSTC_WRAPPER: logs each rustc's peak RSS (KiB), wall seconds and crate name.
rustc=$1; shift
crate=-; prev=
for a in "$@"; do [ "$prev" = --crate-name ] && crate=$a; prev=$a; done
exec /usr/bin/time -a -o "$RUSTC_TIME_LOG" -f "%M %e $crate" "$rustc" "$@"
EOF
chmod +x "$wrapper"

# timed LOG CMD...: runs CMD under time -v; prints "seconds maxrss_kib".
timed() {
    local logf=$1
    shift
    /usr/bin/time -v -o "$logf.time" "$@" >"$logf" 2>&1 || { cat "$logf" >&2; echo "bench: FAILED: $*" >&2; return 1; }
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$logf.time")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$logf.time")
    echo "$wall $rss"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# The wrapper is set for every build of (a), so switching it never invalidates deps.
export RUSTC_WRAPPER=$wrapper
export RUSTC_TIME_LOG=$out/rustc-time.first.log
log "warm-up build of stigmer with $comps (dependencies; not measured beyond this line)"
first=$(cd "$src" && timed "$out/build-first.log" cargo build --release)
log "first build (cold deps unless $CARGO_TARGET_DIR existed): $first"

walls=(); rsss=(); rustc_rss=(); rustc_wall=()
for i in $(seq 1 "$reps"); do
    # Change a component: alternate probe-b's padding seed (same size, new content),
    # so build.rs reruns, payload.bin and manifest.rs change, and the crate re-links.
    padded_probe probe-b $(( i % 2 ? 3 : 2 ))
    export RUSTC_TIME_LOG=$out/rustc-time.$i.log
    rm -f "$RUSTC_TIME_LOG"
    bin_before=$(stat -c %Y.%N "$CARGO_TARGET_DIR/release/stigmer" 2>/dev/null || echo none)
    r=$(cd "$src" && timed "$out/build-a.$i.log" cargo build --release)
    [[ $(stat -c %Y.%N "$CARGO_TARGET_DIR/release/stigmer") != "$bin_before" ]] || { echo "bench: binary not re-linked" >&2; exit 1; }
    grep -q 'Compiling stigmer' "$out/build-a.$i.log" || { echo "bench: stigmer not recompiled" >&2; exit 1; }
    walls+=("${r% *}"); rsss+=("${r#* }")
    read -r rk rw _ < <(awk '$3=="stigmer" {print $1, $2}' "$RUSTC_TIME_LOG" | sort -n | tail -n1)
    rustc_rss+=("$rk"); rustc_wall+=("$rw")
    log "rebuild $i: wall ${r% *} s, peak RSS ${r#* } KiB; rustc stigmer: ${rw} s, ${rk} KiB"
done
# Put probe-b back to seed 2 so the components dir is reproducible.
padded_probe probe-b 2
(cd "$src" && RUSTC_TIME_LOG=/dev/null cargo build --release >/dev/null 2>&1)
unset RUSTC_WRAPPER RUSTC_TIME_LOG

bin=$CARGO_TARGET_DIR/release/stigmer
bin_size=$(stat -c %s "$bin")
payload=$(ls -t "$CARGO_TARGET_DIR"/release/build/stigmer-*/out/payload.bin | head -n1)
payload_size=$(stat -c %s "$payload")
"$bin" components >&2
sect=$(readelf -SW "$bin" | sed -n 's/^ *\[ *[0-9]*\] *//p' | awk '$1==".stigmer_payload" {print $5}')
sect=$((16#$sect))

# (b) include_bytes! vs .incbin, same payload -------------------------------------
cp "$payload" "$out/payload100.bin"
blob=$out/payload100.bin
mkcrate() { # DIR MAIN_RS
    mkdir -p "$1/src"
    printf '[package]\nname = "%s"\nversion = "0.0.0"\nedition = "2021"\n\n[workspace]\n' "$(basename "$1")" > "$1/Cargo.toml"
    printf '%s\n' "$2" > "$1/src/main.rs"
}
mkcrate "$out/incbytes" "static P: &[u8] = include_bytes!(\"$blob\");
// black_box: without it P.len() is a constant and the 100 MB static is dropped.
fn main() { println!(\"{}\", std::hint::black_box(P).len()) }"
mkcrate "$out/incbin" "std::arch::global_asm!(
    \".pushsection .stigmer_payload,\\\"a\\\",@progbits\",
    \".balign 4096\",
    \".globl bench_payload\", \".hidden bench_payload\",
    \"bench_payload:\",
    \".incbin \\\"$blob\\\"\",
    \".globl bench_payload_end\", \".hidden bench_payload_end\",
    \"bench_payload_end:\",
    \".popsection\",
);
extern \"C\" {
    static bench_payload: u8;
    static bench_payload_end: u8;
}
fn main() {
    let len = unsafe { (&raw const bench_payload_end) as usize - (&raw const bench_payload) as usize };
    println!(\"{}\", len)
}"

declare -A b_wall b_rss b_size
for crate in incbytes incbin; do
    for prof in default stigmer; do
        dir=$out/$crate
        envs=(env CARGO_TARGET_DIR="$dir/target-$prof")
        [[ $prof == stigmer ]] && envs+=(CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4 CARGO_PROFILE_RELEASE_PANIC=abort)
        ws=(); rs=()
        for i in $(seq 1 "$reps"); do
            touch "$dir/src/main.rs"
            r=$(cd "$dir" && timed "$out/build-$crate-$prof.$i.log" "${envs[@]}" cargo build --release)
            ws+=("${r% *}"); rs+=("${r#* }")
            log "$crate/$prof $i: wall ${r% *} s, peak RSS ${r#* } KiB"
        done
        exe=$dir/target-$prof/release/$crate
        got=$("$exe")
        [[ $got == "$payload_size" ]] || { echo "bench: $exe printed $got, expected $payload_size" >&2; exit 1; }
        (( $(stat -c %s "$exe") > payload_size )) || { echo "bench: $exe is smaller than the payload: it was optimised out" >&2; exit 1; }
        b_wall[$crate-$prof]=$(printf '%s\n' "${ws[@]}" | median)
        b_rss[$crate-$prof]=$(printf '%s\n' "${rs[@]}" | median)
        b_size[$crate-$prof]=$(stat -c %s "$exe")
    done
done

# Report ----------------------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
kib2mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }
w_med=$(printf '%s\n' "${walls[@]}" | median)
r_med=$(printf '%s\n' "${rsss[@]}" | median)
rr_med=$(printf '%s\n' "${rustc_rss[@]}" | median)
rw_med=$(printf '%s\n' "${rustc_wall[@]}" | median)
{
echo "### Build with ~100 MB of components (stigmer $rev release, warm deps, after a component changed; median of $reps)"
echo
echo "| what | wall s | peak RSS MiB |"
echo "|---|---:|---:|"
echo "| \`cargo build --release\` (whole tree: build.rs + rustc + link) | $w_med | $(kib2mib "$r_med") |"
echo "| of which the \`stigmer\` rustc (compile + thin LTO + link) | $rw_med | $(kib2mib "$rr_med") |"
echo "| first build, cold deps (1 run, for reference) | ${first% *} | $(kib2mib "${first#* }") |"
echo
echo "Runs (wall s / peak RSS KiB): $(for i in "${!walls[@]}"; do printf '%s/%s ' "${walls[$i]}" "${rsss[$i]}"; done)"
echo
echo "### Sizes"
echo
echo "| what | bytes | MiB |"
echo "|---|---:|---:|"
echo "| probe-a + probe-b (raw, uncompressed in the payload) | $raw_files | $(mib "$raw_files") |"
echo "| pyapp onedir (sum of file sizes) | $raw_pyapp | $(mib "$raw_pyapp") |"
echo "| sum of raw components | $raw_total | $(mib "$raw_total") |"
echo "| payload.bin (probes raw, pyapp tar zstd) | $payload_size | $(mib "$payload_size") |"
echo "| .stigmer_payload section | $sect | $(mib "$sect") |"
echo "| final target/bench/target/release/stigmer | $bin_size | $(mib "$bin_size") |"
echo "| binary - payload.bin (launcher itself) | $((bin_size - payload_size)) | $(mib $((bin_size - payload_size))) |"
echo
echo "Binary / sum of raw components: $(awk -v a="$bin_size" -v b="$raw_total" 'BEGIN {printf "%.2f", a / b}')x"
echo
echo "### Same $(mib "$payload_size") MiB payload.bin in a one-line crate: include_bytes! vs global_asm! .incbin (median of $reps, rebuild after touching main.rs)"
echo
echo "| crate / profile | wall s | peak RSS MiB | binary MiB |"
echo "|---|---:|---:|---:|"
for crate in incbytes incbin; do
    for prof in default stigmer; do
        label=$([[ $crate == incbytes ]] && echo 'include_bytes!' || echo '.incbin')
        plabel=$([[ $prof == default ]] && echo 'release (default profile)' || echo 'release, thin LTO, cgu=4, panic=abort')
        k=$crate-$prof
        echo "| $label, $plabel | ${b_wall[$k]} | $(kib2mib "${b_rss[$k]}") | $(mib "${b_size[$k]}") |"
    done
done
echo
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "Machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r), $(rustc --version), load average at end $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Peak RSS = GNU time's max RSS of \`cargo build\`: the largest single process among cargo and its waited-for descendants, not a sum."
} | tee "$out/build-size.md"
