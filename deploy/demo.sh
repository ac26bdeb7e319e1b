#!/usr/bin/env bash
# The demo: a swarm of 3 managers and 2 workers, each host a network namespace on this machine.
# Shows the nodes, kills the leader, shows the new leader, and removes everything at the end
# (KEEP=1 leaves the lab running: `target/debug/shoal lab down` removes it later).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
cargo build --bin shoal
shoal=target/debug/shoal
prefix=demo

[ "${KEEP:-0}" = 1 ] || trap '$shoal lab down --prefix $prefix >/dev/null' EXIT

$shoal lab up --prefix $prefix --managers 3 --workers 2 --dispatcher-heartbeat 1s
echo
$shoal lab exec --prefix $prefix m1 -- shoal node ls
echo
echo "a replicated service (fake runtime: the lab does not run containers yet)"
$shoal lab exec --prefix $prefix m1 -- shoal service create --name web --replicas 6 busybox:1
$shoal lab exec --prefix $prefix m1 -- shoal service scale web=10
$shoal lab exec --prefix $prefix m1 -- shoal service update --image busybox:2 --update-parallelism 3 web
$shoal lab exec --prefix $prefix m1 -- shoal service ls
$shoal lab exec --prefix $prefix m1 -- shoal service ps --filter desired-state=running web
echo
leader=$($shoal lab exec --prefix $prefix m1 -- shoal node ls --format json | grep '"ManagerStatus":"Leader"' | sed 's/.*"Hostname":"\([^"]*\)".*/\1/')
echo "killing the leader ($leader) with SIGKILL"
$shoal lab kill --prefix $prefix "$leader"
other=m1; [ "$leader" = m1 ] && other=m2
# Wait (bounded) until a new leader is elected and the old one is seen Down.
for _ in $(seq 1 150); do
  out=$($shoal lab exec --prefix $prefix $other -- shoal node ls 2>/dev/null || true)
  if echo "$out" | grep -q Leader && echo "$out" | grep -E "^\S+ +$leader " | grep -q Down; then break; fi
  sleep 0.1
done
$shoal lab exec --prefix $prefix $other -- shoal node ls
