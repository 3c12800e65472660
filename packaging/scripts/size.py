#!/usr/bin/env python3
"""Size report and budget of a built stigmer.

Prints each embedded component's raw and stored (compressed) size from `stigmer components
--json`, the launcher itself (binary size minus every stored payload) and the binary's size.

Usage: packaging/scripts/size.py [--budget MIB] [--only "NAME..."] [BINARY]
  BINARY     default target/release/stigmer
  --budget   exit 1 unless the checked size is below MIB MiB
  --only     also project the binary carrying only these components (launcher + their stored
             sizes); the budget then applies to that projection. The tests use it to check the
             reference components' budget with the debug build, which embeds the fixtures too.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float)
    parser.add_argument("--only", default="")
    parser.add_argument("binary", nargs="?", default=os.path.join(ROOT, "target/release/stigmer"))
    args = parser.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"size: no executable stigmer at {args.binary}")

    env = dict(os.environ)
    env.setdefault("STIGMER_HOME", tempfile.mkdtemp(prefix="stigmer-size-"))
    rows = json.loads(subprocess.run([args.binary, "components", "--json"], env=env,
                                     check=True, capture_output=True, text=True).stdout)

    table = [("component", "kind", "compression", "raw MiB", "stored MiB", "ratio")]
    for r in rows:
        ratio = r["size"] / r["stored_size"] if r["stored_size"] else 1.0
        table.append((r["name"], r["kind"], r["compression"], mib(r["size"]),
                      mib(r["stored_size"]), f"{ratio:.2f}x"))
    raw = sum(r["size"] for r in rows)
    stored = sum(r["stored_size"] for r in rows)
    total = os.stat(args.binary).st_size
    launcher = total - stored
    table.append(("all components", "", "", mib(raw), mib(stored), ""))
    table.append(("launcher", "", "", "", mib(launcher), ""))
    table.append(("binary", "", "", "", mib(total), ""))

    checked, what = total, "binary"
    only = args.only.split()
    if only:
        missing = sorted(set(only) - {r["name"] for r in rows})
        if missing:
            sys.exit(f"size: --only names not embedded: {' '.join(missing)}")
        checked = launcher + sum(r["stored_size"] for r in rows if r["name"] in only)
        what = "launcher + " + " ".join(only)
        table.append(("projected", "", "", "", mib(checked), ""))

    widths = [max(len(row[i]) for row in table) for i in range(6)]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    print(f"binary: {args.binary}")
    if args.budget is None:
        return 0
    ok = checked < args.budget * 2**20
    print(f"budget: {what}: {mib(checked)} MiB < {args.budget:g} MiB: {'ok' if ok else 'OVER BUDGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
