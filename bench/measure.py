#!/usr/bin/env python3
"""Helpers of bench/bench.sh.

  measure.py server STIGMER OUT.json REPS     `stigmer server` cold/warm start, stop, supervisor RSS
  measure.py server-parallel STIGMER OUT.json REPS
                                              1 vs 20 notify services (READY=1 after 300 ms each)
  measure.py memory LINKS BIG100 OUT.json     8 running instances: direct, memfd, cache
  measure.py logs STIGMER LINES OUT.json REPS  1,000,000 lines of 100 bytes: to a file directly vs
                                              as a service under the supervisor (every line checked)
  measure.py failures JSON_DIR EXEC_LIMIT_LOG  every hyperfine row with a failed run, and the helper's
                                              messages (bench/exec-limit.c logs why it gave up)
  measure.py cache-start OUT                  the table of bench/cache-start.sh (issue 13 figures)
  measure.py report RUN_DIR REV FIXTURES REFERENCE [DOCS.md]
                                              the markdown tables from RUN_DIR/json/*.json
"""

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

MiB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kib_field(path, field):
    for line in open(path):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


# server ------------------------------------------------------------------------------------------------
def server(stigmer, out, reps):
    base = os.path.join(os.path.dirname(out), "..", "server-homes")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    rows = []

    def run(env, *args, check=True):
        t = time.perf_counter()
        p = subprocess.run([stigmer, *args], env=env, capture_output=True, text=True)
        dt = (time.perf_counter() - t) * 1000
        if check and p.returncode != 0:
            sys.exit(f"measure: stigmer {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return dt, p.stdout

    for i in range(reps):
        home = os.path.join(base, f"home{i}")
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w") as f:
            f.write(f"[services.stigmer-server]\nport = {free_port()}\n")
        env = dict(os.environ, STIGMER_HOME=home)
        for k in ("STIGMER_RUNNER", "STIGMER_LOG"):
            env.pop(k, None)
        row = {}
        for phase in ("cold", "warm"):
            row[phase + "_start_ms"], _ = run(env, "server")
            _, st = run(env, "server", "status", "--json")
            j = json.loads(st)
            pid = j.get("state", j)["supervisor_pid"]
            time.sleep(0.5)  # settled, after the readiness checks
            row[phase + "_rss_kib"] = kib_field(f"/proc/{pid}/status", "VmRSS")
            row[phase + "_hwm_kib"] = kib_field(f"/proc/{pid}/status", "VmHWM")
            row[phase + "_stop_ms"], _ = run(env, "server", "stop")
            time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z":
                sys.exit(f"measure: supervisor {pid} still alive after stop")
        rows.append(row)
        print(f"measure: server rep {i}: " + ", ".join(f"{k}={v:.0f}" for k, v in row.items()), file=sys.stderr)
    json.dump(rows, open(out, "w"), indent=1)


# 20 independent notify services ------------------------------------------------------------------------
# Each sleeps 300 ms after it starts, then sends READY=1: a tiny C program (systemd-notify may not
# exist, and a python3 per service would measure python's start, not the supervisor).
NOTIFIER_C = r"""
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    struct timespec t = {0, 300 * 1000 * 1000};
    nanosleep(&t, 0);
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path) return 2;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sendto(s, "READY=1", 7, 0, (struct sockaddr *)&a, sizeof a) != 7) return 3;
    pause();
    return 0;
}
"""


def server_parallel(stigmer, out, reps, count=20):
    base = os.path.join(os.path.dirname(out), "..", "parallel-homes")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    notifier = os.path.join(base, "notifier")
    with open(notifier + ".c", "w") as f:
        f.write(NOTIFIER_C)
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", notifier, notifier + ".c"], check=True)

    def config(n):
        text = "".join(f"[services.{r}]\nenabled = false\n" for r in ("stigmer-server", "workflow-runner", "agent-runner"))
        for k in range(n):
            text += f"[services.n{k:02}]\ncommand = \"{notifier}\"\nready = {{ notify = true }}\n"
        return text

    rows = []
    for i in range(reps):
        row = {}
        for n in (1, count):
            home = os.path.join(base, f"home{i}-{n}")
            os.makedirs(home)
            with open(os.path.join(home, "config.toml"), "w") as f:
                f.write(config(n))
            env = dict(os.environ, STIGMER_HOME=home)
            for k in ("STIGMER_RUNNER", "STIGMER_LOG"):
                env.pop(k, None)
            t = time.perf_counter()
            p = subprocess.run([stigmer, "server"], env=env, capture_output=True, text=True)
            row[f"start{n}_ms"] = (time.perf_counter() - t) * 1000
            if p.returncode != 0:
                sys.exit(f"measure: {n} notify services did not start: {p.stderr.strip()}")
            st = json.loads(subprocess.run([stigmer, "server", "status", "--json"], env=env, capture_output=True,
                                           text=True).stdout)
            row[f"rss{n}_kib"] = kib_field(f"/proc/{st['supervisor_pid']}/status", "VmRSS")
            t = time.perf_counter()
            subprocess.run([stigmer, "server", "stop"], env=env, capture_output=True, check=True)
            row[f"stop{n}_ms"] = (time.perf_counter() - t) * 1000
        rows.append(row)
        print(f"measure: parallel rep {i}: " + ", ".join(f"{k}={v:.0f}" for k, v in row.items()), file=sys.stderr)
    json.dump(rows, open(out, "w"), indent=1)
    m = lambda k: statistics.median(r[k] for r in rows)
    limit = 2 * m("start1_ms") + 300
    print(f"measure: median start of 1 notify service {m('start1_ms'):.0f} ms, of {count}: "
          f"{m(f'start{count}_ms'):.0f} ms (goal <= 2x + 300 = {limit:.0f} ms: "
          f"{'met' if m(f'start{count}_ms') <= limit else 'NOT met'}); stop {m(f'stop{count}_ms'):.0f} ms; "
          f"supervisor VmRSS {m(f'rss{count}_kib') / 1024:.1f} MiB", file=sys.stderr)
# logs --------------------------------------------------------------------------------------------------
LOG_LINES = 1_000_000


def check_lines(lines, what):
    """Every line of bench/lines.c, once, in order."""
    if len(lines) != LOG_LINES:
        sys.exit(f"measure: {what}: {len(lines)} lines, expected {LOG_LINES}")
    pad = b"x" * 91
    for i, l in enumerate(lines):
        if l != b"%08d" % i + pad:
            sys.exit(f"measure: {what}: line {i} is {l[:20]!r}...")


def stamp_s(t):
    """Seconds of a log stamp (same day is enough for one run)."""
    h, m, s = t[11:23].split(b":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def logs(stigmer, gen, out, reps):
    base = os.path.join(os.path.dirname(out), "..", "logs-homes")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    rows = []
    for i in range(reps):
        direct = os.path.join(base, f"direct{i}.txt")
        t = time.perf_counter()
        with open(direct, "wb") as f:
            subprocess.run([gen], stdout=f, check=True)
        direct_ms = (time.perf_counter() - t) * 1000
        check_lines(open(direct, "rb").read().splitlines(), "direct")
        os.remove(direct)

        home = os.path.join(base, f"home{i}")
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w") as f:
            f.write("[services.stigmer-server]\nenabled = false\n[services.workflow-runner]\nenabled = false\n"
                    "[services.agent-runner]\nenabled = false\n[logs]\nmax_size = 1073741824\n"
                    f"[services.lines]\ncommand = \"{gen}\"\nrestart = \"never\"\nready = {{ started_ms = 0 }}\n")
        env = dict(os.environ, STIGMER_HOME=home)
        for k in ("STIGMER_RUNNER", "STIGMER_LOG"):
            env.pop(k, None)
        subprocess.run([stigmer, "server"], env=env, check=True, capture_output=True)
        log = os.path.join(home, "logs", "lines.log")
        deadline = time.time() + 120
        def tail():
            with open(log, "rb") as f:
                f.seek(max(0, os.path.getsize(log) - (64 << 10)))
                return f.read()
        while b" out| %08d" % (LOG_LINES - 1) not in tail():
            if time.time() > deadline:
                sys.exit("measure: the lines service did not finish within 120 s")
            time.sleep(0.2)
        subprocess.run([stigmer, "server", "stop"], env=env, check=True, capture_output=True)
        records = open(log, "rb").read().splitlines()
        started = next(r for r in records if b" evt| started (pid " in r)
        out_lines = [r for r in records if r[24:30] == b" out| "]
        check_lines([r[30:] for r in out_lines], "under the supervisor")
        supervised_ms = (stamp_s(out_lines[-1]) - stamp_s(started)) * 1000
        row = {"direct_ms": direct_ms, "supervised_ms": supervised_ms, "log_mib": os.path.getsize(log) / MiB}
        rows.append(row)
        print(f"measure: logs rep {i}: " + ", ".join(f"{k}={v:.1f}" for k, v in row.items()), file=sys.stderr)
        shutil.rmtree(home)
    json.dump(rows, open(out, "w"), indent=1)


# memory ------------------------------------------------------------------------------------------------
def meminfo(field):
    return kib_field("/proc/meminfo", field)


def rollup(pid):
    d = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        m = re.match(r"(\w+):\s+(\d+) kB", line)
        if m:
            d[m.group(1)] = int(m.group(2))
    return d


MEMORY_INSTANCES = 8


def memory(links, big100, out):
    cases = {
        "direct": [big100],
        "memfd": [os.path.join(links, "big100")],  # runner = "memfd" in bench.sh's components.toml
        "cache": [os.path.join(links, "big100-c")],
    }
    env = dict(os.environ, PROBE_STDIN="1")
    env.pop("STIGMER_RUNNER", None)
    res = {"_size_kib": os.path.getsize(big100) / 1024}
    for name, cmd in cases.items():
        shmem0 = meminfo("Shmem")
        procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for _ in range(MEMORY_INSTANCES)]
        for p in procs:  # the report ends with pid=; then it blocks reading stdin
            while not p.stdout.readline().startswith(b"pid="):
                pass
        time.sleep(0.2)
        shmem1 = meminfo("Shmem")
        rolls = [rollup(p.pid) for p in procs]
        for p in procs:
            p.stdin.close()
            p.stdout.read()
            p.wait()
        keys = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")
        res[name] = {
            "per_instance": {k: statistics.mean(r.get(k, 0) for r in rolls) for k in keys},
            "shmem_delta_kib": shmem1 - shmem0,
        }
        print(f"measure: memory {name}: {res[name]}", file=sys.stderr)
    json.dump(res, open(out, "w"), indent=1)



# failed runs --------------------------------------------------------------------------------------------
def failed_runs(result):
    """Non-zero exit codes of one hyperfine result (hyperfine -i keeps going and records them)."""
    return [c for c in result.get("exit_codes", []) if c != 0]


def failed_rows(path):
    """'json-name: command: n of m runs failed' for every row of PATH (a JSON file or a directory)."""
    paths = [os.path.join(path, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    bad = []
    for p in paths:
        name = os.path.basename(p)
        if not name.endswith(".json"):
            continue
        try:
            results = json.load(open(p)).get("results", [])
        except (ValueError, AttributeError):
            continue
        for r in results:
            codes = failed_runs(r)
            if codes:
                bad.append(f"{name[:-5]}: {r['command']}: {len(codes)} of {len(r['exit_codes'])} runs failed "
                           f"(exit codes {sorted(set(codes))})")
    return bad


def failures(path, el_log):
    for line in failed_rows(path):
        print(f"measure: FAILED RUNS {line}", file=sys.stderr)
    if os.path.exists(el_log) and os.path.getsize(el_log):
        lines = open(el_log).read().splitlines()
        print(f"measure: {el_log}: {len(lines)} line(s), the last ones:", file=sys.stderr)
        for line in lines[-10:]:
            print(f"measure:   {line}", file=sys.stderr)


def note_failures(r):
    """A row's note for the tables: empty, or how many of its runs failed."""
    codes = failed_runs(r)
    return f" ⚠ {len(codes)}/{len(r['exit_codes'])} runs failed" if codes else ""


# cache start (issue 13) ---------------------------------------------------------------------------------
def cache_start(out, quiet=False):
    j = lambda name: {r["command"]: r for r in json.load(open(os.path.join(out, "json", name + ".json")))["results"]}
    lines = []
    w = lines.append
    fl = j("cache-floor")
    floor = med(fl["stat+execve floor"])
    w("Warm cache start of a tiny C program (the probe, `runner = \"cache\"`) vs a static C program doing what the "
      "cache runner must (`bench/exec-limit stat`: lstat the cached file, execve it); interleaved medians (bench/interleave.py: each command in turn), same run.")
    w("")
    w("| how | median ms | vs floor | target |")
    w("|---|---:|---:|---|")
    for n in ("probe direct", "stat+execve floor", "stat+execve floor, dynamic C", "cargo build --release",
              "make build (static-pie)", "dynamic PIE (--target, no flags)"):
        if n not in fl:  # runs from before the dynamic floor row
            continue
        m = med(fl[n])
        target = f"≤ 1.25x {yes(m / floor <= 1.25)}" if n.startswith(("cargo", "make")) else ""
        w(f"| {n} | {m:.2f} | {m / floor:.2f}x | {target}{note_failures(fl[n])} |")
    w("")
    w("Warm start of a directory component of 8,700 files (725 directories, ~70 MiB) vs one holding only its entry "
      "point (the same probe), through both binaries; as root and as an ordinary user (nobody): either start checks "
      "the entry directory, the stamp's head, the top of the tree and its entry point, whatever the file count.")
    w("")
    w("| who | binary | 1 file ms | 8,700 files ms | ratio | target |")
    w("|---|---|---:|---:|---:|---|")
    for who, name in (("ordinary user", "dirs-user"), ("root", "dirs-root")):
        d = j(name)
        for b, label in (("cargo", "cargo build --release"), ("make", "make build (static-pie)")):
            one, many = med(d[f"dir1 {b}"]), med(d[f"dir8700 {b}"])
            target = f"≤ 1.25x {yes(many / one <= 1.25)}"
            w(f"| {who} | {label} | {one:.2f} | {many:.2f} | {many / one:.2f}x | {target}"
              f"{note_failures(d[f'dir1 {b}'])}{note_failures(d[f'dir8700 {b}'])} |")
    w("")
    f = j("dir-fill")
    first, tar = med(f["stigmer first start"]), med(f["tar -x + syncfs"])
    w(f"First start of the 8,700-file component (empty cache: unpack, hash, fsync, rename, stamp, then the run): "
      f"{first:.0f} ms; `tar -x` of the same tree (uncompressed tar, page cache warm) + syncfs: {tar:.0f} ms; "
      f"ratio {first / tar:.2f}x{note_failures(f['stigmer first start'])}.")
    text = "\n".join(lines) + "\n"
    if not quiet:
        print(text, end="")
    open(os.path.join(out, "cache-start.md"), "w").write(text)
    return text


# report ------------------------------------------------------------------------------------------------
def hf(run, name):
    path = os.path.join(run, "json", name + ".json")
    return {r["command"]: r for r in json.load(open(path))["results"]}


def med(r):
    return r["median"] * 1000


def tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def mib(b):
    return f"{b / MiB:.1f}"


def yes(ok):
    return "✅" if ok else "❌"


def report(run, rev, fixtures, reference, docs):
    ex = hf(run, "exec")
    lines = []
    w = lines.append
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    hfv = subprocess.run(["hyperfine", "--version"], capture_output=True, text=True).stdout.strip()
    w(f"Run of `make bench` on stigmer {rev}, {time.strftime('%Y-%m-%d %H:%M %Z')}. Machine: {os.cpu_count()} "
      f"CPUs ({cpu}), {kib_field('/proc/meminfo', 'MemTotal') // 1024 // 1024 + 1} GiB RAM, Linux {platform.release()}, "
      f"{hfv}; load average at the end {' '.join(open('/proc/loadavg').read().split()[:3])}. A shared 2-core VM: "
      "expect ±0.1 ms on the sub-millisecond rows and a few % elsewhere between runs; compare rows of one run, "
      "not runs. Medians of hyperfine -N (no shell); raw JSON in target/bench/run/json.")
    w("")

    # 1 ---------------------------------------------------------------------------------------
    w("### 1. Exec overhead: direct vs stigmer memfd vs stigmer warm cache")
    w("")
    w("| component | MiB | direct ms | memfd ms | memfd overhead | target (0.6 ms/MiB + 1) | C copy limit overhead "
      "| cache ms | cache overhead | target (0.7 ms) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sizes = {"probe": os.path.getsize(os.path.join(fixtures, "probe")),
             "go": os.path.getsize(os.path.join(fixtures, "stigmer-server")),
             "big50": os.path.getsize(os.path.join(fixtures, "big-probe")),
             "big100": os.path.getsize(os.path.join(run, "big100"))}
    labels = {"probe": "C probe", "go": "Go stigmer-server --version", "big50": "big-probe (50 MiB)",
              "big100": "100 MiB padded probe"}
    over = {}
    for k, label in labels.items():
        d = med(ex[f"{k} direct"])
        m = med(ex[f"{k} memfd"])
        c = med(ex[f"{k} cache"])
        lim = med(ex[f"{k} copy-limit"]) - d
        size = sizes[k] / MiB
        target = 0.6 * size + 1
        over[k] = (m - d, c - d, lim)
        w(f"| {label} | {size:.2f} | {d:.2f} | {m:.2f} | {m - d:+.2f} ms ({m / d:.2f}x) | {target:.1f} ms "
          f"{yes(m - d <= target)} | {lim:+.2f} ms | {c:.2f} | {c - d:+.2f} ms ({c / d:.2f}x) | {yes(c - d <= 0.7)} |")
    w("")
    floor = lambda n: med(ex[n]) - med(ex["probe direct"])
    slope = lambda a, b: (a - b) / ((sizes["big100"] - sizes["big50"]) / MiB)
    send = {k: med(ex[f"{k} sendfile-limit"]) - med(ex[f"{k} direct"]) for k in ("probe", "big50", "big100")}
    w(f"Per MiB (slope between the 50 and 100 MiB rows): stigmer memfd "
      f"{slope(over['big100'][0], over['big50'][0]):.3f} ms/MiB; C mmap+write copy limit "
      f"{slope(over['big100'][2], over['big50'][2]):.3f} ms/MiB; C sendfile {slope(send['big100'], send['big50']):.3f} ms/MiB. "
      f"Fixed cost floors on the probe, from a static C program: one more execve {floor('probe execve-limit'):+.2f} ms, "
      f"open(O_PATH)+execveat {floor('probe execveat-limit'):+.2f} ms, memfd+write+seal+fexecve "
      f"{floor('probe copy-limit'):+.2f} ms (sendfile {send['probe']:+.2f} ms). The cache runner's floor is the execve "
      f"row, the memfd runner's the copy-limit row: the rest is the launcher's own start-up.")
    w("")

    # 2 ---------------------------------------------------------------------------------------
    w("### 2. The same Python app: PyInstaller onefile vs onedir vs onedir through stigmer")
    w("")
    od, os_, of = (med(ex[f"pyapp {n}"]) for n in ("onedir direct", "onedir stigmer", "onefile direct"))
    w("| how | median ms | vs onedir direct | target |")
    w("|---|---:|---:|---|")
    w(f"| onedir, run directly | {od:.1f} | 1.00x | |")
    w(f"| onedir through stigmer (warm cache) | {os_:.1f} | {os_ / od:.3f}x | ≤ 1.1x {yes(os_ / od <= 1.1)} |")
    w(f"| onefile, run directly (the seed's approach) | {of:.1f} | {of / od:.2f}x | ≥ 4x slower than stigmer: "
      f"{of / os_:.2f}x {yes(of / os_ >= 4)} |")
    w("")

    # 3 + 4 -----------------------------------------------------------------------------------
    comps = {c["name"]: c for c in json.load(open(os.path.join(run, "json", "components.json")))}
    fill, warm = hf(run, "fill"), hf(run, "warm")
    w("### 3. First fill of the cache (empty cache before each run; write, hash, fsync, rename, stamp)")
    w("")
    w("| component | kind | raw MiB | stored MiB | first run ms | warm run ms | fill ms (first − warm) | MiB/s |")
    w("|---|---|---:|---:|---:|---:|---:|---:|")
    cname = {"probe": "probe", "big100": "big100"}
    for n in ("probe", "big100", "stigmer-server", "workflow-runner", "agent-runner"):
        c = comps[cname.get(n, n)]
        first, wm = med(fill[n]), med(warm[n])
        fl = first - wm
        rate = c["size"] / MiB / (fl / 1000) if fl > 0 else float("nan")
        w(f"| {n} | {c['kind']}, {c['compression']} | {mib(c['size'])} | {mib(c['stored_size'])} | {first:.1f} "
          f"| {wm:.1f} | {fl:.1f} | {rate:.0f} |")
    ref = [n for n in ("stigmer-server", "workflow-runner", "agent-runner")]
    ref_fill = sum(med(fill[n]) - med(warm[n]) for n in ref)
    ref_size = sum(comps[n]["size"] for n in ref)
    b100 = med(fill["big100"]) - med(warm["big100"])
    w("")
    w(f"Target: first fill of 100 MB under 0.3 s: the 100 MiB file fills in {b100:.0f} ms {yes(b100 < 300)}; the three "
      f"reference components ({mib(ref_size)} MiB) in {ref_fill:.0f} ms together (sum of their fills).")
    w("")
    w("### 4. Compression per component kind and level")
    w("")
    lv = hf(run, "levels")
    gd = med(lv["go direct"])
    w(f"Fill = first run − warm run through the cache (STIGMER_RUNNER=cache). memfd exec = `--version` of the Go "
      f"binary through the memfd runner, decompressing into the memfd (direct: {gd:.2f} ms). PyInstaller builds "
      "cannot run from a memfd. The onefile fills are the difference of two ~280 ms runs (each run re-extracts the "
      "app into $TMPDIR, σ ≈ 20 ms): within noise, read them as 'small'.")
    w("")
    w("| kind | compression | raw MiB | stored MiB | ratio | fill ms | memfd exec ms |")
    w("|---|---|---:|---:|---:|---:|---:|")
    kinds = {"go": "Go binary (stigmer-server)", "onedir": "PyInstaller onedir (tar)", "onefile": "PyInstaller onefile"}
    for k, label in kinds.items():
        for l in ("none", "1", "3", "9", "19"):
            n = f"{k}-z{l}"
            c = comps[n]
            fl = med(fill[n]) - med(warm[n])
            mx = f"{med(lv[n]):.2f} ({med(lv[n]) - gd:+.2f})" if k == "go" else "-"
            comp = "none" if l == "none" else f"zstd {l}"
            w(f"| {label} | {comp} | {mib(c['size'])} | {mib(c['stored_size'])} | {c['size'] / c['stored_size']:.2f}x "
              f"| {fl:.1f} | {mx} |")
    w("")

    # 5 ---------------------------------------------------------------------------------------
    w("### 5. Binary size")
    w("")
    refc = json.load(open(os.path.join(run, "json", "components-ref.json")))
    raw = sum(tree_size(os.path.join(reference, c["name"])) for c in refc)
    stored = sum(c["stored_size"] for c in refc)
    fat = os.path.getsize(os.path.join(run, "bin", "stigmer-ref"))
    launcher = os.path.getsize(os.path.join(run, "bin", "stigmer-launcher"))
    w("| what | bytes | MiB |")
    w("|---|---:|---:|")
    w(f"| reference components, raw (files of {', '.join(c['name'] for c in refc)}) | {raw} | {mib(raw)} |")
    w(f"| the same, as stored (Go raw, onedir tar zstd-3) | {stored} | {mib(stored)} |")
    w(f"| fat `stigmer` with them (release) | {fat} | {mib(fat)} |")
    w(f"| launcher only (no STIGMER_COMPONENTS_DIR) | {launcher} | {mib(launcher)} |")
    w(f"| fat − stored payload | {fat - stored} | {mib(fat - stored)} |")
    w("")
    w(f"Fat binary / raw components: {fat / raw:.2f}x; launcher-only is {launcher / fat * 100:.0f}% of the fat binary.")
    w("")

    # 6 ---------------------------------------------------------------------------------------
    srv = json.load(open(os.path.join(run, "json", "server.json")))
    m = lambda k: statistics.median(r[k] for r in srv)
    w(f"### 6. `stigmer server` (reference components, fresh STIGMER_HOME each rep, median of {len(srv)})")
    w("")
    w("| | start to all-ready ms | stop ms | supervisor VmRSS MiB (VmHWM) |")
    w("|---|---:|---:|---:|")
    for ph, label in (("cold", "cold: first run, fills the cache"), ("warm", "warm: second start, same home")):
        w(f"| {label} | {m(ph + '_start_ms'):.0f} | {m(ph + '_stop_ms'):.0f} | {m(ph + '_rss_kib') / 1024:.1f} "
          f"({m(ph + '_hwm_kib') / 1024:.1f}) |")
    w("")
    w("Readiness of the reference services: each sends READY=1 (sd_notify) when it really serves "
      "(stigmer-server once its socket is served, the runners after their first answered claim); no declared sleeps.")
    w("")
    par = os.path.join(run, "json", "server-parallel.json")
    if os.path.exists(par):
        rows = json.load(open(par))
        p = lambda k: statistics.median(r[k] for r in rows)
        w(f"Independent `ready = {{ notify = true }}` services, each READY=1 300 ms after it starts (median of {len(rows)}):")
        w("")
        w("| services | start to all-ready ms | stop ms | supervisor VmRSS MiB |")
        w("|---:|---:|---:|---:|")
        for n in (1, 20):
            w(f"| {n} | {p(f'start{n}_ms'):.0f} | {p(f'stop{n}_ms'):.0f} | {p(f'rss{n}_kib') / 1024:.1f} |")
        w("")

    # 7 ---------------------------------------------------------------------------------------
    mem = json.load(open(os.path.join(run, "json", "memory.json")))
    size = mem.pop("_size_kib", None)
    n = MEMORY_INSTANCES if size else 2
    w(f"### 7. Memory of {n} running instances of the 100 MiB probe (blocked reading stdin)")
    w("")
    w(f"| runner | Rss KiB | Pss KiB | Shared_Clean KiB | Private KiB | Shmem added (all {n}) MiB | vs one copy | target |")
    w("|---|---:|---:|---:|---:|---:|---:|---|")
    for k, r in mem.items():
        p = r["per_instance"]
        copies = r["shmem_delta_kib"] / size if size else float("nan")
        # The default policy runs a 100 MiB ELF from the cache; memfd is the forced row.
        target = f"≤ 1.1x {yes(copies <= 1.1)}" if k == "cache" else ""
        w(f"| {k} | {p['Rss']:.0f} | {p['Pss']:.0f} | {p['Shared_Clean']:.0f} | "
          f"{p['Private_Clean'] + p['Private_Dirty']:.0f} | {r['shmem_delta_kib'] / 1024:.1f} | {copies:.2f}x | {target} |")
    w("")
    w("smaps_rollup per instance (mean). The probe maps only its ELF segments (the padding is never "
      "touched), so the mapped pages are alike; the difference is the file behind them: from the cache all "
      "instances share the page cache of one file on disk (evictable); from a memfd each instance fills and pins "
      "its own full copy (Shmem, unevictable without swap), which is why the default policy sends a big single-file "
      "ELF to the cache.")
    w("")

    # 9 ---------------------------------------------------------------------------------------
    lp = os.path.join(run, "json", "logs.json")
    if os.path.exists(lp):
        lr = json.load(open(lp))
        dm = statistics.median(r["direct_ms"] for r in lr)
        sm = statistics.median(r["supervised_ms"] for r in lr)
        w("### 9. A chatty service: 1,000,000 lines of 100 bytes (bench/lines.c, stdio)")
        w("")
        w("| to a file directly ms | under the supervisor ms | ratio | target | every line, in order |")
        w("|---:|---:|---:|---:|---|")
        w(f"| {dm:.0f} | {sm:.0f} | {sm / dm:.2f}x | ≤ 2x {yes(sm / dm <= 2)} | ✅ ({len(lr)} runs) |")
        w("")
        w("Medians. Under the supervisor: from the `started` event's stamp to the stamp of the last line (the time "
          "it was read from the pipe; it is in the file right after); the log holds every line stamped with its "
          "stream (~130 MB). Directly: the same program with stdout on a file.")
        w("")

    # 8 ---------------------------------------------------------------------------------------
    va = hf(run, "variants")
    d = med(va["probe direct"])
    w("### 8. Launcher link variants on the small probe (same sources, same components)")
    w("")
    w(f"probe direct {d:.2f} ms; floors from a static C program: execve {med(va['probe execve-limit']) - d:+.2f} ms, "
      f"memfd sendfile+fexecve {med(va['probe sendfile-limit']) - d:+.2f} ms.")
    w("")
    w("| variant | RUSTFLAGS | binary MiB | memfd ms | memfd overhead | cache ms | cache overhead |")
    w("|---|---|---:|---:|---:|---:|---:|")
    flags = {"dyn": "(none): dynamic PIE", "static-pie": "`-C target-feature=+crt-static`",
             "static": "`-C target-feature=+crt-static -C relocation-model=static`"}
    for v, fl in flags.items():
        if f"{v} memfd" not in va:
            continue
        size = os.path.getsize(os.path.join(run, "bin", f"stigmer-{v}"))
        mm, cc = med(va[f"{v} memfd"]), med(va[f"{v} cache"])
        w(f"| {v} | {fl} | {mib(size)} | {mm:.2f} | {mm - d:+.2f} | {cc:.2f} | {cc - d:+.2f} |")
    w("")

    # 10 --------------------------------------------------------------------------------------
    cs = os.path.join(run, "cache-start")
    if os.path.exists(os.path.join(cs, "json", "dir-fill.json")):
        w("### 10. The cache runner's own cost (bench/cache-start.sh)")
        w("")
        lines.extend(cache_start(cs, quiet=True).splitlines())
        w("")

    bad = failed_rows(os.path.join(run, "json")) + (failed_rows(os.path.join(cs, "json")) if os.path.isdir(cs) else [])
    if bad:
        w("### Failed runs")
        w("")
        w("hyperfine -i kept going past these; the medians above include the failed runs' times. bench/exec-limit's "
          "own messages are in target/bench/run/exec-limit.log.")
        w("")
        for b in bad:
            w(f"- {b}")
        w("")

    text = "\n".join(lines) + "\n"
    print(text, end="")
    open(os.path.join(run, "bench.md"), "w").write(text)
    if docs:
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        old = open(docs).read() if os.path.exists(docs) else f"# Benchmarks\n\n{begin}\n{end}\n"
        if begin not in old:
            old += f"\n{begin}\n{end}\n"
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1]
        open(docs, "w").write(f"{head}{begin}\n{text}{end}{tail}")
        print(f"measure: wrote {docs}", file=sys.stderr)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "server":
        server(args[0], args[1], int(args[2]))
    elif cmd == "server-parallel":
        server_parallel(args[0], args[1], int(args[2]))
    elif cmd == "logs":
        logs(args[0], args[1], args[2], int(args[3]))
    elif cmd == "memory":
        memory(*args)
    elif cmd == "failures":
        failures(args[0], args[1])
    elif cmd == "cache-start":
        cache_start(args[0])
    elif cmd == "report":
        report(args[0], args[1], args[2], args[3], args[4] if len(args) > 4 and args[4] else None)
    else:
        sys.exit(__doc__)
