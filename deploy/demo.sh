#!/usr/bin/env bash
# The demo: a swarm of 3 managers and 2 workers, each host a network namespace on this machine,
# running real containers (runc) from a registry on the lab's own network. A web service of 6
# replicas answers with its hostname and version; it is scaled to 10 and rolled to v2 two tasks
# at a time; then the leader is killed and the swarm carries on. Everything is removed at the
# end (KEEP=1 leaves the lab running: `target/debug/shoal lab down --prefix demo` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
cargo build --bin shoal
shoal=target/debug/shoal
prefix=demo
lab=/run/shoal-lab/$prefix

say() { printf '\n== %s\n' "$*"; }
on() { local host=$1; shift; $shoal lab exec --prefix $prefix "$host" -- "$@"; }

[ "${KEEP:-0}" = 1 ] || trap '$shoal lab down --prefix $prefix >/dev/null' EXIT

say "Creating 5 hosts (network namespaces m1-m3, w1-w2) and a registry on their network"
$shoal lab up --prefix $prefix --managers 3 --workers 2 --dispatcher-heartbeat 1s \
  --runtime oci --registry
on m1 shoal node ls

registry=192.168.77.2:5000
say "A web service of 6 replicas of $registry/web:v1 (busybox httpd serving '<hostname> <version>')"
on m1 shoal service create --name web --replicas 6 \
  --hostname '{{.Service.Name}}-{{.Task.Slot}}' --update-parallelism 2 --update-delay 1s \
  $registry/web:v1
on m1 shoal service ps --filter desired-state=running web

# Each running task holds an address on its node's container bridge (the overlay network and
# the routing mesh come with the networking work); ask every replica from its own host.
ask_all() {
  local n=0
  for lease in "$lab"/*/data/net/leases/*; do
    [ -e "$lease" ] || continue
    host=$(basename "$(dirname "$(dirname "$(dirname "$(dirname "$lease")")")")")
    ip=$(basename "$lease")
    printf '  %-3s %-11s -> %s\n' "$host" "$ip" "$(on "$host" curl -s --noproxy '*' --max-time 3 "http://$ip/" || echo FAILED)"
    n=$((n + 1))
  done
  echo "  ($n replicas answered)"
}
say "Asking every replica on its container address"
ask_all

say "Scaling to 10 replicas"
on m1 shoal service scale web=10
ask_all

say "Rolling update to web:v2, two tasks at a time"
on m1 shoal service update --image $registry/web:v2 web
ask_all

say "Service logs come from every node through the managers"
on m1 shoal service logs --tail 1 web | head -4

leader=$(on m1 shoal node ls --format json | grep '"ManagerStatus":"Leader"' | sed 's/.*"Hostname":"\([^"]*\)".*/\1/')
say "Killing the leader ($leader) with SIGKILL"
$shoal lab kill --prefix $prefix "$leader"
other=m1; [ "$leader" = m1 ] && other=m2
# Wait (bounded) until a new leader is elected and the old one is seen Down.
for _ in $(seq 1 150); do
  out=$(on $other shoal node ls 2>/dev/null || true)
  if echo "$out" | grep -q Leader && echo "$out" | grep -E "^\S+ +$leader " | grep -q Down; then break; fi
  sleep 0.1
done
on $other shoal node ls
say "Under the new leader, the replicas that ran on $leader are started again on the other hosts"
for _ in $(seq 1 300); do
  on $other shoal service ls | grep -q ' 10/10 ' && break
  sleep 0.1
done
on $other shoal service ls
on $other shoal service ps --filter desired-state=running web
