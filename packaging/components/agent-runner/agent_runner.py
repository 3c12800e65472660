"""agent-runner: the reference Python component embedded in stigmer.

    agent-runner run        analyse the job input read from stdin, print one JSON object
    agent-runner serve      claim "agent" jobs from $STIGMER_SERVER_URL and post results
    agent-runner --version

The analysis is deliberately small but exercises what a frozen (PyInstaller
onedir) Python needs at run time: hashlib, sqlite3 (its bundled shared
library) and ssl (the bundled OpenSSL). Stdlib only; HTTP through urllib.

Words are maximal runs of Unicode word characters (letters, digits, '_'),
apostrophes inside a word kept ("don't"), compared case-folded.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

# Keep in step with components.toml (build.sh checks).
__version__ = "0.1.0"

IDLE_POLL = 0.2
MAX_BACKOFF = 5.0
HTTP_TIMEOUT = 10.0

WORD_RE = re.compile(r"\w+(?:'\w+)*")


def log(msg):
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    print(f"agent-runner: {stamp} {msg}", file=sys.stderr, flush=True)


def analyze(text):
    """The job result for one input text, as a dict."""
    words = [w.casefold() for w in WORD_RE.findall(text)]
    db = sqlite3.connect(":memory:")
    try:
        # Sorting a large input spills to temporary files in $TMPDIR, /var/tmp, /tmp or the
        # working directory: a container with a read-only root and no tmpfs has none of them
        # ("disk I/O error"). The database is in memory; so are its temporary tables.
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("CREATE TABLE words (word TEXT NOT NULL)")
        db.executemany("INSERT INTO words (word) VALUES (?)", ((w,) for w in words))
        (distinct,) = db.execute("SELECT COUNT(DISTINCT word) FROM words").fetchone()
        # Ties go to the alphabetically first word, so the result is stable.
        top = db.execute(
            "SELECT word FROM words GROUP BY word ORDER BY COUNT(*) DESC, word ASC LIMIT 1"
        ).fetchone()
    finally:
        db.close()
    return {
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "words": len(words),
        "distinct_words": distinct,
        "top_word": top[0] if top else None,
        "engine": "agent-runner",
        "tls": ssl.OPENSSL_VERSION,
    }


def render(result):
    return json.dumps(result, ensure_ascii=False)


def cmd_run(_args):
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        print(f"agent-runner: input is not valid UTF-8: {e}", file=sys.stderr)
        return 1
    print(render(analyze(text)), flush=True)
    return 0


class Server:
    """The few stigmer-server calls agent-runner needs, over urllib."""

    def __init__(self, base):
        self.base = base.rstrip("/")

    def _post(self, path, payload):
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(payload).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            # A 4xx/5xx is an answer, not a connection failure.
            return e.code, e.read()

    def claim(self):
        """The next agent job, or None when the queue is empty."""
        status, body = self._post("/v1/jobs/claim", {"kind": "agent"})
        if status == 204:
            return None
        if status != 200:
            raise RuntimeError(f"claim: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def result(self, job_id, status, output):
        return self._post(f"/v1/jobs/{job_id}/result", {"status": status, "output": output})[0]


def sd_notify(state):
    """Sends STATE to the service manager's $NOTIFY_SOCKET (sd_notify protocol), if any."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), path)
    except OSError as e:
        log(f"notify {state}: {e}")


def cmd_serve(_args):
    base = os.environ.get("STIGMER_SERVER_URL") or "http://127.0.0.1:7234"
    server = Server(base)
    stopping = threading.Event()

    def on_signal(signum, _frame):
        # Only set a flag: a job in progress finishes and reports first.
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"version {__version__} polling {base} for agent jobs")

    backoff = IDLE_POLL
    down = False
    ready = False
    while not stopping.is_set():
        try:
            job = server.claim()
            if not ready:
                # The server answered a claim: this runner really works on jobs now.
                sd_notify("READY=1")
                ready = True
        except (OSError, RuntimeError, ValueError) as e:
            # The server may be restarting: say so once, retry quietly.
            if not down:
                log(f"server unreachable, retrying: {e}")
                down = True
            stopping.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        if down:
            log("server reachable again")
            down = False
        backoff = IDLE_POLL
        if job is None:
            stopping.wait(IDLE_POLL)
            continue
        process(server, job, stopping)
    log("stopped")
    return 0


def process(server, job, stopping):
    job_id = job["id"]
    start = time.monotonic()
    try:
        status, output = "done", render(analyze(job.get("input", "")))
    except Exception:
        status, output = "failed", traceback.format_exc()
    log(f"job {job_id}: {status} in {(time.monotonic() - start) * 1000:.1f}ms")
    backoff = IDLE_POLL
    deadline = None
    while True:
        try:
            code = server.result(job_id, status, output)
            if code != 200:
                log(f"job {job_id}: result not accepted: HTTP {code}")
            return
        except OSError as e:
            # After SIGTERM try a few seconds only; an unreported job stays
            # "running" and the server requeues it when it next starts.
            if stopping.is_set():
                deadline = deadline or time.monotonic() + 3.0
                if time.monotonic() > deadline:
                    log(f"job {job_id}: giving up on posting the result: {e}")
                    return
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="agent-runner", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"agent-runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="analyse stdin, print the result as JSON").set_defaults(func=cmd_run)
    sub.add_parser("serve", help="work on agent jobs from $STIGMER_SERVER_URL").set_defaults(
        func=cmd_serve
    )
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
