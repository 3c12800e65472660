#!/usr/bin/env bash
# Installs a container engine for the container tests (tests/cli/container.rs), if missing, on
# Debian/Ubuntu: podman; runc (crun, Debian's default runtime, refuses a cgroup v1/v2 hybrid;
# the tests pass --runtime runc); the CNI dnsname plugin, without which Debian 12's podman
# (CNI backend) resolves no container name on a user-defined network; catatonit, from which
# podman builds the pause image of a pod (`podman kube play`; no registry here); podman-compose
# (Debian's 1.0.3) for the Compose test. Where apt-get is missing it says so and exits 0: the tests then
# skip, naming the missing engine.
set -euo pipefail

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[[ -e /usr/lib/cni/dnsname ]] || need+=(golang-github-containernetworking-plugin-dnsname)
command -v catatonit >/dev/null || [[ -x /usr/libexec/podman/catatonit ]] || need+=(catatonit)
command -v podman-compose >/dev/null || need+=(podman-compose)
((${#need[@]})) || exit 0
if ! command -v apt-get >/dev/null; then
    echo "container-deps: no apt-get: install ${need[*]} to run the container tests" >&2
    exit 0
fi
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "container-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
