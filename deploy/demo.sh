#!/usr/bin/env bash
# The demo: a swarm of 3 managers and 2 workers, each host a network namespace on this machine,
# running real containers (runc) from a registry on the lab's own network. A web service of 6
# replicas on an overlay network is published on port 8080 through the routing mesh: every
# host answers on 8080 and spreads the requests over all replicas, wherever they run. The
# service is scaled to 10 and rolled to v2 two tasks at a time while being asked; then the lab
# is removed (KEEP=1 leaves it running: `target/debug/shoal lab down --prefix demo` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
cargo build --bin shoal
shoal=target/debug/shoal
prefix=demo
hosts=(m1 m2 m3 w1 w2)
registry=192.168.77.2:5000

say() { printf '\n== %s\n' "$*"; }
on() { local host=$1; shift; $shoal lab exec --prefix $prefix "$host" -- "$@"; }
# The lab's underlay plays the outside world: a client there reaches the hosts' addresses only.
outside() { nsenter --net=/run/netns/$prefix-ul -- "$@"; }
addr_of() { on "$1" ip -4 -o addr show | awk '$4 ~ /^192\.168\.77\./ { split($4, a, "/"); print a[1] }'; }

finish() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "The lab is left running: '$shoal lab down --prefix $prefix' removes it."
  else
    say "Removing the lab: every host, container, network namespace, link and nft rule"
    $shoal lab down --prefix $prefix
  fi
}
trap finish EXIT

say "Creating 5 hosts (network namespaces m1-m3, w1-w2) and a registry on their network"
$shoal lab up --prefix $prefix --managers 3 --workers 2 --dispatcher-heartbeat 1s \
  --runtime oci --registry
on m1 shoal node ls

say "An overlay network (VXLAN between the hosts) for the web tier"
on m1 shoal network create --driver overlay web-net
on m1 shoal network ls

say "web: 6 replicas of $registry/web:v1 (busybox httpd answering '<hostname> <version>'), published on port 8080"
on m1 shoal service create --name web --replicas 6 --network web-net --publish 8080:80 \
  --hostname '{{.Service.Name}}-{{.Task.Slot}}' --update-parallelism 2 --update-delay 1s \
  $registry/web:v1
on m1 shoal service ls
on m1 shoal service ps --filter desired-state=running web

# Asks port 8080 of every host, from outside the cluster, $1 times each, and shows which
# replicas answered through that host.
ask_every_host() {
  local times=$1
  for h in "${hosts[@]}"; do
    local a; a=$(addr_of "$h")
    local answers
    answers=$(for _ in $(seq "$times"); do
      outside curl -s --noproxy '*' --max-time 3 "http://$a:8080/" || echo FAILED
    done | sort | uniq -c | awk '{ $1 = $1 "x"; print }' | paste -sd, -)
    printf '  %-3s %s:8080 -> %s\n' "$h" "$a" "$answers"
  done
}

say "Asking port 8080 on every host from outside: each host spreads over all 6 replicas"
ask_every_host 12

say "Scaling to 10 replicas: the new ones join the routing mesh once they run"
on m1 shoal service scale web=10
ask_every_host 20

say "Rolling update to web:v2, two tasks at a time; each old task leaves the mesh before it stops"
on m1 shoal service update --image $registry/web:v2 web
ask_every_host 20

say "The replicas see the outside client's own address when the host it asked runs them"
a=$(addr_of w1)
for _ in $(seq 6); do outside curl -s --noproxy '*' --max-time 3 "http://$a:8080/cgi-bin/ip"; done | sort | uniq -c
