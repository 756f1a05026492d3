#!/usr/bin/env bash
# Fuzzes a live single-node agent with schemathesis (PyPI) against its own GET /openapi.json:
# no 5xx, every answer conforms to the described status codes, content types and schemas, and
# no panic in the agent's log. Bounded: SCHEMATHESIS_EXAMPLES examples per operation and
# SCHEMATHESIS_TIME seconds in all. scripts/test.sh runs it with a small budget.
#
# Usage: scripts/schemathesis.sh [IP]   (default 127.0.0.77; the API listens on IP:8000)
set -euo pipefail
cd "$(dirname "$0")/.."

ip="${1:-127.0.0.77}"
examples="${SCHEMATHESIS_EXAMPLES:-25}"
budget="${SCHEMATHESIS_TIME:-180}"

command -v schemathesis >/dev/null 2>&1 || pip install -q schemathesis
cargo build -q -p orion

dir="$(mktemp -d /tmp/orion-schemathesis.XXXXXX)"
./target/debug/orion --id st1 --bind "$ip" --publish-ip "$ip" --data-dir "$dir/data" \
  --bootstrap >"$dir/agent.log" 2>&1 &
agent=$!
# The agent is stopped by its pid; its containers, its network and its data dir go, the log
# is printed on a failure.
# (Each step goes on whatever the one before returned: `set -e` holds in a trap too.)
cleanup() {
  kill "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  docker ps -aq --filter label=orion.node=st1 | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker network rm orion-st1 >/dev/null 2>&1 || true
  [ "${status:-1}" = 0 ] || tail -n 50 "$dir/agent.log"
  rm -rf "$dir"
}
trap cleanup EXIT

# The admin token the bootstrap wrote to the credentials file (every route but /health needs
# one), and a leader (writes answer 503 before that): at most 30 s. The token is read again on
# every try: an entry left for this address by an earlier run is stale until the new
# bootstrap replaces it, and only a token the node accepts ends the wait.
token=""
for _ in $(seq 1 300); do
  token="$(./target/debug/orion token show --addr "http://$ip:8000" 2>/dev/null)" || token=""
  [ -n "$token" ] && curl -sf -H "Authorization: Bearer $token" "http://$ip:8000/status" 2>/dev/null \
    | grep -q '"role":"leader"' && break
  kill -0 "$agent" 2>/dev/null || { cat "$dir/agent.log"; exit 1; }
  sleep 0.1
done
auth="Authorization: Bearer ${token:-none}"

# `DELETE /tokens/{id}` is left out too: schemathesis reuses ids it saw in answers, so it
# could revoke the very admin token it sends (`GET /tokens` lists its id), and every later
# request answered 401 (it did, once in several runs). Revocation has tests of its own
# (`api_tokens_have_roles_and_a_revocation_reaches_every_node_within_a_second`).
# `GET /events` follows by default: an endless stream no fuzzer can read to its end (and
# schemathesis cannot parse NDJSON), so it is left out of the run and checked here with
# `follow=false`: a 200 whose every line is a JSON object with the event fields.
status=0
schemathesis run "http://$ip:8000/openapi.json" -H "$auth" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /events --exclude-path '/tokens/{id}' \
  --max-examples "$examples" --max-time "$budget" --request-timeout 5 --seed 1 || status=$?

events="$(curl -sf -H "$auth" "http://$ip:8000/events?follow=false&limit=100")" || { echo "GET /events failed" >&2; status=1; }
if ! python3 -c '
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l]
assert lines, "no events"
for l in lines:
    e = json.loads(l)
    assert set(e) == {"index", "at", "topic", "type", "key", "payload"}, e
' <<<"$events"; then
  echo "GET /events?follow=false: not the described event lines" >&2
  status=1
fi

if grep -n "panicked" "$dir/agent.log"; then
  echo "the agent panicked" >&2
  status=1
fi
exit "$status"
