#!/usr/bin/env bash
# simhost.sh runs several simulated edge hosts on one machine.
#
# A simulated host NAME is:
#   - a network namespace osim-NAME, joined by a veth pair to the bridge osimbr0
#     that lives in the namespace osim-br, with an address in 10.99.0.0/24;
#   - a persistent mount namespace ($STATE/NAME/mnt) with a private /dev/shm,
#     /run/runc, /run/containers/networks and /run/libpod, so that rootful
#     Podman instances do not share locks, runtime state or IPAM (HOSTS.md),
#     and a private /etc/criu ($STATE/NAME/criu-etc), where runc finds the
#     CRIU config (runc.conf) that the page path writes for one checkpoint;
#   - its own Podman storage and configuration (CONTAINERS_CONF and
#     CONTAINERS_STORAGE_CONF under $STATE/NAME) and its own
#     `podman system service` on $STATE/NAME/podman.sock.
#
# Commands:
#   simhost.sh up NAME [IP]        create host NAME with address IP (10.99.0.x; default:
#                                  the lowest free one); prints socket=..., ip=... lines
#   simhost.sh down NAME           stop its processes and remove all of it; the last host
#                                  to go takes the bridge namespace and state mounts with it
#   simhost.sh down-all            remove every simulated host (also after a failed test)
#   simhost.sh exec NAME CMD...    run CMD inside NAME (its netns, its mounts, its Podman env)
#   simhost.sh env NAME            print the environment a process in NAME needs
#   simhost.sh list                the hosts that exist
#   simhost.sh kill-podman NAME    SIGKILL the host's Podman service (failure tests)
#   simhost.sh start-podman NAME   start it again
#   simhost.sh shape NAME RATE     shape NAME's link to RATE (e.g. 100mbit) both ways; RATE=off removes it
#   simhost.sh start-docker NAME   start a private dockerd in NAME (--experimental, no iptables, no
#                                  bridge; CRIU from /usr/local/sbin first on its PATH); prints docker=unix://...
#   simhost.sh reboot NAME         simulate a reboot: kill everything running in NAME (Podman, dockerd,
#                                  conmon, shims, containers; the agent too), wipe its runtime state (the
#                                  mount namespace with /dev/shm and overlay mounts, /run/runc, libpod's
#                                  and dockerd's runtime directories, IPAM, container interfaces), then
#                                  start Podman (and dockerd, if it ran) again. Storage and data survive.
#
# Only addresses in 10.99.0.0/24, only inside these namespaces. Nothing is routed
# anywhere else: the namespaces have no default route.
#
# OSIM_DISK_MIB, when set for `up`, puts the host's data directory (Podman's
# storage, volumes) on a tmpfs of that size: a small disk that tests can fill.
#
# OSIM_TAG (a few lowercase letters or digits) keeps separate sets of hosts
# apart on one machine: its own state directories, bridge and namespace names
# (osim<TAG>-NAME), so that `down-all` of one set leaves the others alone.
set -euo pipefail

TAG=${OSIM_TAG:-}
[[ $TAG =~ ^[a-z0-9]{0,3}$ ]] || { echo "simhost: error: OSIM_TAG '$TAG' must be 0-3 lowercase letters or digits" >&2; exit 1; }
STATE=${OSIM_STATE:-/run/osim$TAG}
DATA=${OSIM_DATA:-/var/lib/osim$TAG}
NS=osim$TAG-   # prefix of every namespace this set of hosts uses
BRNS=${NS}br
BR=osimbr0
VETH=osv$TAG-
CONTAINERS_BASE_CONF=${ORCHESTRATE_CONF_DIR:-/etc/orchestrate}/containers.conf
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { printf 'simhost: error: %s\n' "$*" >&2; exit 1; }

valid_name() { [[ $1 =~ ^[a-z0-9]{1,8}$ ]] || die "host name '$1' must be 1-8 lowercase letters or digits"; }

ensure_state() {
  mkdir -p "$STATE" "$DATA"
  # The persistent mount-namespace files must live on a private mount, or the
  # bind mount that keeps them alive would propagate into every namespace.
  if ! findmnt -rn -o TARGET "$STATE" | grep -qx "$STATE"; then
    mount --bind "$STATE" "$STATE"
  fi
  mount --make-private "$STATE"
}

ensure_bridge() {
  if ! ip netns list | awk '{print $1}' | grep -qx "$BRNS"; then
    ip netns add "$BRNS"
  fi
  ip -n "$BRNS" link show "$BR" >/dev/null 2>&1 || {
    ip -n "$BRNS" link add "$BR" type bridge
    ip -n "$BRNS" link set "$BR" up
    ip -n "$BRNS" link set lo up
  }
}

host_env() {
  local name=$1 d=$STATE/$1
  cat <<EOF
CONTAINERS_CONF=$d/containers.conf
CONTAINERS_STORAGE_CONF=$d/storage.conf
TMPDIR=$d/tmp
PATH=$PATH
OSIM_HOST=$name
EOF
}

# free_ip: the lowest 10.99.0.N (N in 1..250) no simulated host uses.
free_ip() {
  local n used
  used=$(cat "$STATE"/*/ip 2>/dev/null || true)
  for n in $(seq 1 250); do
    grep -qx "10.99.0.$n" <<<"$used" || { echo "10.99.0.$n"; return; }
  done
  die "no free address in 10.99.0.0/24"
}

# start_podman NAME: the host's Podman service, owned by this script's host
# (`down` stops it through its pid file).
start_podman() {
  local name=$1 d=$STATE/$1
  rm -f "$d/podman.sock"
  # Like podman.service with PrivateTmp=yes, the service starts with no
  # staging files of an earlier one: a Podman killed mid-export or
  # mid-import leaves its checkpoint*/restore* temporaries in its TMPDIR.
  find "$d/tmp" -maxdepth 1 -type f \( -name 'checkpoint[0-9]*' -o -name 'restore[0-9]*' \) -delete 2>/dev/null || true
  (
    cd /
    exec setsid nsenter --mount="$d/mnt" --net="/run/netns/$NS$name" \
      env -i $(host_env "$name" | tr '\n' ' ') \
      podman --log-level=warn system service --time=0 "unix://$d/podman.sock" \
      </dev/null >>"$d/podman.log" 2>&1 9>&-
  ) &
  echo $! >"$d/podman.pid"
  for _ in $(seq 1 100); do
    [ -S "$d/podman.sock" ] && curl -sf --unix-socket "$d/podman.sock" http://d/v4.0.0/libpod/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  [ -S "$d/podman.sock" ] || { cat "$d/podman.log" >&2; die "podman service for $name did not start"; }
}

cmd_kill_podman() {
  local d=$STATE/$1
  [ -f "$d/podman.pid" ] || die "no podman service on $1"
  kill -KILL "$(cat "$d/podman.pid")" 2>/dev/null || true
  rm -f "$d/podman.pid"
}

# start_docker NAME: a private dockerd (and the containerd it starts) for the
# host: its own data root, exec root, socket, cgroup parent and config file, so
# that it shares nothing with the machine's Docker or other hosts' daemons. It
# never touches the firewall or the host's network (no bridge, no iptables).
start_docker() {
  local name=$1 d=$STATE/$1 data=$DATA/$1
  [ -e "$d/mnt" ] || die "no host $name"
  command -v dockerd >/dev/null || die "dockerd missing: run scripts/install-docker.sh"
  mkdir -p "$data/docker" "$d/dx" "$d/tmp"
  [ -f "$d/daemon.json" ] || echo '{}' >"$d/daemon.json"
  # One start at a time: a first dockerd writes the machine-wide
  # /etc/docker/key.json, and two at once corrupt it.
  exec 8>"$STATE.docker.lock"
  flock 8
  rm -f "$d/docker.sock"
  (
    cd /
    exec setsid nsenter --mount="$d/mnt" --net="/run/netns/$NS$name" \
      env -i $(host_env "$name" | tr '\n' ' ') \
      dockerd --config-file "$d/daemon.json" --data-root "$data/docker" --exec-root "$d/dx" \
      --pidfile "$d/dx/dockerd.pid" -H "unix://$d/docker.sock" --experimental \
      --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
      --cgroup-parent "/$NS$name" --exec-opt native.cgroupdriver=cgroupfs --log-level=warn \
      </dev/null >>"$d/docker.log" 2>&1 9>&-
  ) &
  echo $! >"$d/docker.pid"
  for _ in $(seq 1 200); do
    [ -S "$d/docker.sock" ] && curl -sf --unix-socket "$d/docker.sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf --unix-socket "$d/docker.sock" http://d/_ping >/dev/null 2>&1 || { tail -20 "$d/docker.log" >&2; die "dockerd for $name did not start"; }
  flock -u 8
  exec 8>&-
  echo "docker=unix://$d/docker.sock"
}

# make_mntns NAME: the host's persistent mount namespace with its private
# runtime directories (a fresh /dev/shm, /run/runc, IPAM, libpod's /run)
# and its own /etc/criu (runc.conf).
make_mntns() {
  local d=$STATE/$1
  touch "$d/mnt"
  mkdir -p "$d/criu-etc" /etc/criu
  unshare --mount="$d/mnt" --propagation private sh -ec "
    mount -t tmpfs -o mode=1777,size=1g tmpfs /dev/shm
    mkdir -p /run/runc /run/containers/networks /run/libpod
    mount --bind '$d/runc' /run/runc
    mount --bind '$d/networks' /run/containers/networks
    mount --bind '$d/libpod' /run/libpod
    mount --bind '$d/criu-etc' /etc/criu
  "
}

# kill_cgroup DIR: SIGKILL every process in a cgroup (v1) tree.
kill_cgroup() {
  local f pid
  [ -d "$1" ] || return 0
  while read -r f; do
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$f"
  done < <(find "$1" -name cgroup.procs 2>/dev/null)
}

# cmd_reboot NAME: what a power cycle does to the host's runtime state, while
# its disks (Podman storage, Docker's data root, the agent's data) survive.
cmd_reboot() {
  local name=$1 d=$STATE/$1 data=$DATA/$1 docker=0 id pid dev
  [ -e "$d/mnt" ] || die "no host $name"
  [ -f "$d/docker.pid" ] && docker=1
  # Everything dies at once, without a chance to clean up.
  for id in $(ls "$data/storage/overlay-containers" 2>/dev/null); do
    kill_cgroup "/sys/fs/cgroup/pids/libpod_parent/libpod-$id"
  done
  kill_cgroup "/sys/fs/cgroup/pids/$NS$name"
  for f in "$d"/*.pid; do
    [ -f "$f" ] || continue
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  for _ in 1 2 3; do
    for pid in $(ip netns pids "$NS$name" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.2
  done
  # /run, /dev/shm and the mounts go: a new mount namespace.
  umount "$d/mnt" 2>/dev/null || umount -l "$d/mnt" 2>/dev/null || true
  { grep -o " $data/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -f "$d/mnt" "$d/podman.sock" "$d/docker.sock"
  for dir in runc networks libpod run tmp dx; do
    rm_retry "${d:?}/$dir"
    mkdir -p "$d/$dir"
  done
  # The container interfaces in the host's network namespace go too.
  for dev in $(ip -n "$NS$name" -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    case $dev in lo|eth0) ;; *) ip -n "$NS$name" link del "$dev" 2>/dev/null || true ;; esac
  done
  make_mntns "$name"
  start_podman "$name"
  echo "socket=unix://$d/podman.sock"
  if [ "$docker" = 1 ]; then start_docker "$name"; fi
}

cmd_up() {
  local name=$1 ip=${2:-} d=$STATE/$1 data=$DATA/$1
  valid_name "$name"
  mkdir -p "$STATE"
  # Several test processes may create hosts at once: one at a time.
  exec 9>"$STATE.lock"
  flock 9
  [ -n "$ip" ] || ip=$(free_ip)
  [[ $ip =~ ^10\.99\.0\.([0-9]{1,3})$ ]] || die "address '$ip' must be in 10.99.0.0/24"
  grep -qx "$ip" <(cat "$STATE"/*/ip 2>/dev/null) && die "address $ip is taken"
  [ -f "$CONTAINERS_BASE_CONF" ] || die "$CONTAINERS_BASE_CONF missing: run scripts/install-host.sh first"
  [ ! -e "$d/mnt" ] || die "host $name already exists (simhost.sh down $name)"
  ensure_state
  ensure_bridge
  if [ -n "${OSIM_DISK_MIB:-}" ]; then
    [[ $OSIM_DISK_MIB =~ ^[0-9]+$ ]] || die "OSIM_DISK_MIB '$OSIM_DISK_MIB' must be a number"
    mkdir -p "$data"
    mount -t tmpfs -o "size=${OSIM_DISK_MIB}m,mode=0700" tmpfs "$data"
  fi
  mkdir -p "$d/tmp" "$d/runc" "$d/networks" "$d/libpod" "$d/netconf" "$d/run" "$data/storage" "$data/volumes" "$data/static"

  # Network: veth pair, host end eth0 in osim-NAME, bridge end in osim-br.
  ip netns add "$NS$name"
  ip link add "$VETH$name" type veth peer name eth0 netns "$NS$name"
  ip link set "$VETH$name" netns "$BRNS"
  ip -n "$BRNS" link set "$VETH$name" master "$BR" up
  ip -n "$NS$name" addr add "$ip/24" dev eth0
  ip -n "$NS$name" link set eth0 up
  ip -n "$NS$name" link set lo up
  echo "$ip" >"$d/ip"

  # Podman configuration private to this host.
  grep -qx '\[network\]' "$CONTAINERS_BASE_CONF" || die "$CONTAINERS_BASE_CONF has no [network] section: rerun scripts/install-host.sh"
  awk -v tmp="$d/libpod" -v static="$data/static" -v vol="$data/volumes" -v net="$d/netconf" '
      {print}
      /^\[engine\]$/ {print "tmp_dir = \"" tmp "\""; print "static_dir = \"" static "\""; print "volume_path = \"" vol "\""}
      /^\[network\]$/ {print "network_config_dir = \"" net "\""}
    ' "$CONTAINERS_BASE_CONF" >"$d/containers.conf"
  cat >"$d/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$data/storage"
runroot = "$d/run"
EOF

  make_mntns "$name"
  start_podman "$name"
  echo "socket=unix://$d/podman.sock"
  echo "ip=$ip"
}

# kill_tree PID: stop a process and its descendants, waiting up to 5 s before SIGKILL.
kill_tree() {
  local pid=$1 child
  for child in $(pgrep -P "$pid" 2>/dev/null || true); do kill_tree "$child"; done
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# rm_retry DIR: remove DIR even while a dying process still writes into it.
rm_retry() {
  for _ in 1 2 3 4 5; do rm -rf "$1" 2>/dev/null && return 0; sleep 0.3; done
  rm -rf "$1" || echo "simhost: warning: could not remove $1" >&2
}

cmd_down() {
  local name=$1 d=$STATE/$1 pid
  [ -d "$d" ] || [ -e "/run/netns/$NS$name" ] || return 0
  # Containers first, while the service still runs, so conmon and the workloads go too.
  if [ -S "$d/podman.sock" ] && [ -e "$d/mnt" ] && [ -e "/run/netns/$NS$name" ]; then
    (cmd_exec "$name" timeout 30 podman rm -af -t 0 >/dev/null 2>&1) || true
  fi
  # The same for a private dockerd: its containers may live in network
  # namespaces of their own, where the sweep below would not find them.
  if [ -S "$d/docker.sock" ] && [ -e "$d/mnt" ]; then
    (cmd_exec "$name" sh -c "ids=\$(timeout 10 /usr/bin/docker -H unix://$d/docker.sock ps -aq); [ -z \"\$ids\" ] || timeout 30 /usr/bin/docker -H unix://$d/docker.sock rm -f \$ids" >/dev/null 2>&1) || true
  fi
  for f in "$d"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill_tree "$pid"
  done
  # Anything else still running in the host's network namespace (agents, conmon, workloads).
  if [ -e "/run/netns/$NS$name" ]; then
    for pid in $(ip netns pids "$NS$name" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  sleep 0.2
  if [ -e "$d/mnt" ]; then
    # Overlay mounts of containers live in the host's mount namespace and go with it.
    umount "$d/mnt" 2>/dev/null || umount -l "$d/mnt" 2>/dev/null || true
  fi
  ip -n "$BRNS" link del "$VETH$name" 2>/dev/null || true
  ip netns del "$NS$name" 2>/dev/null || true
  # Podman's storage may hold mounts made in the root namespace by earlier tools.
  if [ -d "$DATA/$name" ]; then
    { grep -o " $DATA/$name[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm_retry "${DATA:?}/$name"
  fi
  rm_retry "${STATE:?}/$name"
  # The cgroups a private dockerd made under its --cgroup-parent.
  for cg in /sys/fs/cgroup/*/"$NS$name"; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# drop_shared removes what the hosts share (the bridge namespace, the bind
# mount that keeps the mount-namespace files, the state directories) once no
# host is left. It holds the lock `up` takes, so it never races a host being
# created.
drop_shared() {
  exec 9>"$STATE.lock"
  flock 9
  if ! ls "$STATE"/*/ip >/dev/null 2>&1 && ! ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS" | grep -qvx "$BRNS"; then
    ip netns del "$BRNS" 2>/dev/null || true
    if findmnt -rn -o TARGET "$STATE" 2>/dev/null | grep -qx "$STATE"; then
      umount "$STATE" 2>/dev/null || umount -l "$STATE" 2>/dev/null || true
    fi
    rmdir "$STATE" "$DATA" 2>/dev/null || true
    rm -f "$STATE.docker.lock"
  fi
  flock -u 9
  exec 9>&-
}

cmd_down_all() {
  local n
  if [ -d "$STATE" ]; then
    for n in $(ls "$STATE"); do [ -d "$STATE/$n" ] && cmd_down "$n"; done
  fi
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS" | grep -vx "$BRNS" || true); do
    cmd_down "${n#$NS}"
  done
  drop_shared
}

cmd_exec() {
  local name=$1 d=$STATE/$1
  shift
  [ -e "$d/mnt" ] || die "no host $name"
  exec_env=$(host_env "$name" | tr '\n' ' ')
  nsenter --mount="$d/mnt" --net="/run/netns/$NS$name" env $exec_env "$@"
}

cmd_shape() {
  local name=$1 rate=$2
  if [ "$rate" = off ]; then
    ip netns exec "$NS$name" tc qdisc del dev eth0 root 2>/dev/null || true
    ip netns exec "$BRNS" tc qdisc del dev "$VETH$name" root 2>/dev/null || true
    return
  fi
  ip netns exec "$NS$name" tc qdisc replace dev eth0 root tbf rate "$rate" burst 128kb latency 100ms
  ip netns exec "$BRNS" tc qdisc replace dev "$VETH$name" root tbf rate "$rate" burst 128kb latency 100ms
}

[ "$(id -u)" = 0 ] || die "run as root"
case "${1:-}" in
  up) [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: simhost.sh up NAME [IP]"; cmd_up "$2" "${3:-}" ;;
  down) [ $# -eq 2 ] || die "usage: simhost.sh down NAME"; cmd_down "$2"; drop_shared ;;
  down-all) cmd_down_all ;;
  exec) [ $# -ge 3 ] || die "usage: simhost.sh exec NAME CMD..."; n=$2; shift 2; cmd_exec "$n" "$@" ;;
  env) [ $# -eq 2 ] || die "usage: simhost.sh env NAME"; host_env "$2" ;;
  list) ls "$STATE" 2>/dev/null || true ;;
  kill-podman) [ $# -eq 2 ] || die "usage: simhost.sh kill-podman NAME"; cmd_kill_podman "$2" ;;
  start-podman) [ $# -eq 2 ] || die "usage: simhost.sh start-podman NAME"; start_podman "$2" ;;
  start-docker) [ $# -eq 2 ] || die "usage: simhost.sh start-docker NAME"; start_docker "$2" ;;
  shape) [ $# -eq 3 ] || die "usage: simhost.sh shape NAME RATE|off"; cmd_shape "$2" "$3" ;;
  reboot) [ $# -eq 2 ] || die "usage: simhost.sh reboot NAME"; cmd_reboot "$2" ;;
  *) die "usage: simhost.sh up|down|down-all|exec|env|list|shape ..." ;;
esac
