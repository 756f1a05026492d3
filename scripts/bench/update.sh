#!/usr/bin/env bash
# The rolling-update benchmark of BENCHMARKS.md ("Rolling update beside Swarm"): a 10-replica
# service rolled to a new version by Orion and by Docker Swarm, parallelism 2, start-first,
# monitor 2 s; wall time and the requests a 20 ms prober saw fail. Release build; one run
# (--runs N for N updates in a row); raw results in the directory it prints.
# Needs python3, a Docker engine, root (Swarm). Extra arguments go to update.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/test-image.sh
cargo build --release -p orion
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
OUT="${BENCH_OUT:-$(mktemp -d -t orion-update-bench-XXXXXX)}"
echo "update bench: raw results in $OUT"
# If update.py dies without its own clean-up, leave the Swarm it initialised.
trap '[ -f "$OUT/swarm-initialised" ] && docker swarm leave --force >/dev/null 2>&1; true' EXIT
python3 scripts/bench/update.py --orion "$TARGET_DIR/release/orion" --out "$OUT" "$@"
