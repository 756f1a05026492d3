#!/usr/bin/env bash
# The mesh benchmark of BENCHMARKS.md ("The mesh"): wrk through the Orion mesh, direct to the
# task's port, and through Docker Swarm's routing mesh; an agent's memory with 1,000 idle
# proxied connections. Release build; one run; raw results in the directory it prints.
# Needs wrk (Debian package), python3, a Docker engine, root (VIPs, Swarm).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null 2>&1 || { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; }
bash scripts/test-image.sh
cargo build --release -p orion
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
OUT="${BENCH_OUT:-$(mktemp -d -t orion-mesh-bench-XXXXXX)}"
echo "mesh bench: raw results in $OUT"
python3 scripts/bench/mesh.py --orion "$TARGET_DIR/release/orion" --out "$OUT"
