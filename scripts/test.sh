#!/usr/bin/env bash
# Runs the whole test suite: what the README's second set-up command and .ci/run call.
# Installs what the tests need from Debian (busybox-static for the local test image, iptables
# for partitions, tmux for the terminal UI test, prometheus for promtool, dnsutils for dig,
# iproute2 and curl for the mesh, tcpdump for the gossip capture and openssl for the RPC port of the security test), builds the test
# image, runs every test of the workspace, then schemathesis (PyPI) against the API. Under
# CI=true the Docker and cluster tests fail rather than skip when the engine is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v busybox >/dev/null 2>&1 && busybox --list >/dev/null 2>&1 || need_pkgs+=(busybox-static)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v tmux >/dev/null 2>&1 || need_pkgs+=(tmux)
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
command -v tcpdump >/dev/null 2>&1 || need_pkgs+=(tcpdump)
# The RPC port test talks TLS to it with and without a client certificate.
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v dig >/dev/null 2>&1 || need_pkgs+=(dnsutils)
# The mesh: `ip` holds service VIPs; its end-to-end tests call ingress ports with curl.
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null; }
fi

if docker info >/dev/null 2>&1; then
  bash scripts/test-image.sh
elif [ "${CI:-}" = "true" ]; then
  echo "CI=true but the Docker engine is unreachable" >&2
  exit 1
else
  echo "Docker engine unreachable: the Docker and cluster tests will skip"
fi

# The output is kept to count the tests for the closing line (pipefail keeps cargo's status).
results="$(mktemp /tmp/orion-test-results.XXXXXX)"
trap 'rm -f "$results"' EXIT
# --no-fail-fast: one run shows every failing test binary, not only the first.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$results"

# The API against its own OpenAPI description: schemathesis (PyPI) fuzzes a live node,
# bounded to a few examples per operation and 90 s in all; no 5xx, no answer off the schema,
# no panic.
SCHEMATHESIS_EXAMPLES=10 SCHEMATHESIS_TIME=90 bash scripts/schemathesis.sh 127.0.0.78

# One closing line for the whole run: the tests of every cargo test binary, added up.
awk '/^test result:/ {p += $4; f += $6; i += $8} END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, i}' "$results"
