#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md and rewrites that file with the figures, the machine,
# the date and the exact commands.
#
#   scripts/bench.sh            full run (about 20 minutes on 2 cores)
#   scripts/bench.sh --quick    CI-sized run (fewer requests, rounds and kills; about 8 minutes)
#   scripts/bench.sh --only startup,write,tasks10k,running,memory,gossip,gossip_sim,lifeguard,scale,failover,scheduler
#   ORION_BENCH_NET=127.0.130 ORION_BENCH_ETCD_NET=127.0.131 scripts/bench.sh ...   (other loopback nets)
#
# Needs: cargo, python3 (stdlib only), a Docker engine, root for apt-get when etcd is missing.
# Uses loopback nets 127.0.30.x (Orion agents) and 127.0.31.x (etcd, in-process gossip members);
# every process it starts is stopped by its pid, every container and service it creates is
# labelled and removed. Raw results are kept in the output directory it prints.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --only) ONLY="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

OUT="${BENCH_OUT:-$(mktemp -d -t orion-bench-out-XXXXXX)}"
mkdir -p "$OUT"
echo "bench: mode $MODE, raw results in $OUT"

# etcd for the write-path comparison (Debian's etcd-server).
if ! command -v etcd >/dev/null 2>&1; then
  echo "bench: installing etcd-server etcd-client"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q etcd-server etcd-client >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q etcd-server etcd-client >/dev/null; }
fi
docker info >/dev/null 2>&1 || { echo "bench: the Docker engine is unreachable" >&2; exit 1; }
bash scripts/test-image.sh

cargo build --release -p orion -p orion-bench
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
ORION="$TARGET_DIR/release/orion"
TOOL="$TARGET_DIR/release/orion-bench"

want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

figures="$(echo "$ONLY" | tr ',' '\n' | grep -v '^scheduler$' | paste -sd, - || true)"
if [ -z "$ONLY" ] || [ -n "$figures" ]; then
  python3 scripts/bench/run.py --orion "$ORION" --tool "$TOOL" --mode "$MODE" --out "$OUT" --only "$figures"
fi

if want scheduler; then
  cargo bench -p orion-scheduler --bench place -- --measurement-time 3 --warm-up-time 1 2>&1 \
    | tee "$OUT/criterion.txt"
  cargo test -p orion-scheduler --release --test latency -- --ignored --nocapture 2>&1 \
    | tee "$OUT/latency.txt"
fi

python3 scripts/bench/report.py "$OUT" > BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
echo "bench: wrote BENCHMARKS.md (raw results in $OUT)"
