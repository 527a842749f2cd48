#!/usr/bin/env bash
# demo.sh: three simulated edge hosts with agents, a workload on host1,
# `orchestrate drain host1`, and proof that the workload kept counting on its
# new host with its memory intact. Everything is torn down at the end, also
# after a failure. Run through `make demo` (which builds and installs first).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
BIN=$PWD/bin/orchestrate
SIM=$PWD/scripts/simhost.sh
IMAGE_TAR=$(scripts/build-workload-image.sh)
HOSTS=(host1 host2 host3)
WORK=$(mktemp -d /run/orchestrate-demo.XXXXXX)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  say "tearing down"
  trap '' INT TERM
  for h in "${HOSTS[@]}"; do "$SIM" down "$h" || true; done
  rm -rf "$WORK"
  # What a run leaves behind would be a bug: say so.
  local left
  left=$( { ip netns list | grep -o '^osim-[^ ]*'; pgrep -f "$BIN agent"; findmnt -rn -o TARGET | grep '^/run/osim'; } 2>/dev/null || true)
  [ -z "$left" ] || echo "demo: warning: left behind: $left" >&2
}
trap cleanup EXIT
# Ctrl-C or a kill ends the script through its EXIT trap, so the hosts, the
# agents (started in sessions of their own) and the bridge go in every case.
trap 'exit 130' INT TERM

cli() { "$BIN" --agent "/run/osim/host1/agent.sock" "$@"; }
probe() { "$SIM" exec "$1" sh -c 'echo | busybox nc 127.0.0.1 8080'; }
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"]*\)\"\{0,1\}[,}].*/\1/p"; }

say "three simulated hosts, each with its own network namespace, Podman and agent"
"$BIN" keygen "$WORK/cluster.key" >/dev/null
first=""
for h in "${HOSTS[@]}"; do
  "$SIM" up "$h" >"$WORK/$h.up"
  ip=$(sed -n 's/^ip=//p' "$WORK/$h.up")
  sock=$(sed -n 's/^socket=//p' "$WORK/$h.up")
  [ -n "$first" ] || first=$ip
  "$SIM" exec "$h" podman load -q -i "$IMAGE_TAR" >/dev/null
  cat >"/run/osim/$h/agent.yaml" <<EOF
node: {name: $h, data_dir: /var/lib/osim/$h/orchestrate}
cluster: {bind: "$ip:7946", join: ["$first:7946"], bootstrap_expect: 3, secret_file: $WORK/cluster.key}
api: {socket: /run/osim/$h/agent.sock}
engine: {type: podman, socket: "$sock"}
EOF
  setsid "$SIM" exec "$h" "$BIN" agent --config "/run/osim/$h/agent.yaml" </dev/null >"/run/osim/$h/agent.log" 2>&1 &
  echo $! >"/run/osim/$h/agent.pid"
  echo "$h: $ip"
done
for _ in $(seq 1 100); do
  n=$(cli members -o json 2>/dev/null | grep -o '"status": *"alive"' | wc -l || true)
  leader=$(cli members -o json 2>/dev/null | grep -c '"role": *"leader"' || true)
  [ "$n" = 3 ] && [ "$leader" = 1 ] && break
  sleep 0.2
done
cli members

say "a workload on host1: 64 MiB of touched memory, a counter ticking every 10 ms"
"$SIM" exec host1 podman run -d --name counter --network host localhost/orchestrate-workload:latest \
  -mib 64 -listen 127.0.0.1:8080 >/dev/null
for _ in $(seq 1 50); do probe host1 >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
before=$(probe host1)
echo "host1 says: $before"
cli ps

say "orchestrate drain host1"
cli drain host1

say "where is it now?"
cli ps
to=$(cli ps -o json | tr -d ' \n' | grep -o '{[^}]*"name":"counter"[^}]*}' | field host)
sleep 0.5
after=$(probe "$to")
echo "$to says: $after"

b_start=$(echo "$before" | field start); a_start=$(echo "$after" | field start)
b_sum=$(echo "$before" | field checksum); a_sum=$(echo "$after" | field checksum)
b_cnt=$(echo "$before" | field counter); a_cnt=$(echo "$after" | field counter)
gap=$(echo "$after" | field max_gap_ms)
say "result"
if [ "$b_start" = "$a_start" ] && [ "$b_sum" = "$a_sum" ] && [ "$a_cnt" -gt "$b_cnt" ]; then
  echo "the same process (started $a_start) kept counting: $b_cnt on host1 -> $a_cnt on $to"
  echo "its 64 MiB of memory came along: checksum $b_sum = $a_sum"
  echo "longest pause the application itself saw: $gap ms"
  cli migrations
else
  echo "FAILED: before $before / after $after" >&2
  exit 1
fi
