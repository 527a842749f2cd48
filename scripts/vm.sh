#!/usr/bin/env bash
# vm.sh runs orchestrate on real Debian 12 guests under QEMU: what a network
# namespace cannot fake (a real reboot, systemd starting the agent, another
# kernel with soft-dirty tracking, Debian's own CRIU).
#
# The guest image is built once and cached; it is rebuilt only when its
# inputs change (the image-building functions of this script, the package
# list, scripts/install-host.sh):
#   1. on this machine, debootstrap makes a minimal Debian 12 root (kernel,
#      systemd, OpenSSH, ifupdown) from this machine's own apt mirror, and
#      mkfs.ext4 packs it into a raw disk (about 3 minutes);
#   2. the guest boots once, with QEMU user networking so that apt reaches the
#      mirror, and runs scripts/install-host.sh there: on the guest's kernel 6.1
#      Debian's own CRIU passes `criu check`, so the script takes that branch
#      (no private CRIU). Then it enables podman.socket, with the Podman
#      settings the Vagrantfile gives its VMs, and powers off.
# Nothing of a run is in the image. Each boot unpacks a per-run seed (a tar
# on a second, read-only disk) over / before systemd starts: `make install
# DESTDIR=...` of this checkout (binary, systemd unit, completion), the
# agent's config, the cluster secret, the unit enabled as `systemctl enable`
# would, the guest's address, an ssh key, the workload image. A code change
# therefore never rebuilds the image.
#
# Guests vm1..vm3 have 1 vCPU and 1 GiB each and run under TCG (`-accel tcg`:
# nested KVM hangs on these machines). Their disks are copy-on-write overlays
# of the cached image, thrown away by `down`. They sit on a bridge in a
# network namespace of their own, ovm$OSIM_TAG, at 10.99.0.11-13; the
# namespace holds 10.99.0.1, from where `ssh` reaches them. Nothing is routed
# anywhere else. A guest's reboot is real: QEMU resets it and it boots again
# with the same disks.
#
# Commands:
#   vm.sh image              build the image unless cached; prints its directory
#   vm.sh up N               boot N guests (1-3), wait until ssh answers on each
#   vm.sh ssh I [CMD...]     run CMD (a shell line) as root on guest I (1-3)
#   vm.sh push I SRC DST     copy the file SRC to DST on guest I
#   vm.sh wait-ssh I [SECS]  wait until guest I answers ssh (after a reboot)
#   vm.sh shape RATE         shape every guest's link to RATE (e.g. 100mbit); off removes it
#   vm.sh console I          print guest I's serial console log so far
#   vm.sh down               stop every guest, remove the namespace and the run's files
#   vm.sh test [REGEX]       image, then the VM tests (internal/vmtest) matching REGEX;
#                            everything is torn down at the end, also on failure or Ctrl-C
#
# Environment:
#   OSIM_TAG            keeps one set of guests apart from another (0-3 lowercase letters or digits)
#   VM_CONFIG_APPEND    YAML appended to every agent's config (sections other than
#                       node, cluster, api, engine, transfer, log)
#   VM_CACHE            image cache (default /var/cache/orchestrate/vm)
#   VM_MEM, VM_CPUS     guest size (default 1024 MiB, 1 vCPU)
#   VM_CPU              QEMU's -cpu (default: qemu64 with x86-64-v2 and AES-NI)
#   VM_BOOT_TIMEOUT     seconds to wait for ssh after boot (default 600)
#   VM_OWNER_PID        `up` only: the set goes down by itself once this process
#                       is gone (the Go tests pass their own pid)
#
# Every QEMU process, tap, namespace and overlay of a set of guests goes with
# `down`; `up` and `test` call it themselves when they fail or are interrupted,
# and a set with an owner (VM_OWNER_PID) goes within seconds of its owner's
# end, however that came (a Go test binary killed by -timeout, Ctrl-C or
# SIGKILL runs no cleanup of its own, and QEMU, daemonized, would outlive it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

TAG=${OSIM_TAG:-}
[[ $TAG =~ ^[a-z0-9]{0,3}$ ]] || { echo "vm: error: OSIM_TAG '$TAG' must be 0-3 lowercase letters or digits" >&2; exit 1; }
NS=ovm$TAG
BR=ovmbr0
RUN=/run/orchestrate-vm$TAG         # pid files, consoles, seeds, the ssh key
DATA=/var/lib/orchestrate-vm$TAG    # disk overlays (they grow with what guests write)
CACHE=${VM_CACHE:-/var/cache/orchestrate/vm}
MEM=${VM_MEM:-1024}
CPUS=${VM_CPUS:-1}
# A plain qemu64 with AES-NI and the SSE4 of x86-64-v2: emulating newer
# vector units (-cpu max) made the guests several times slower, while the
# agents' SSH transfers need AES-NI to move more than a few Mbit/s.
CPU=${VM_CPU:-qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+aes,+pclmulqdq}
BOOT_TIMEOUT=${VM_BOOT_TIMEOUT:-600}
SUITE=bookworm
HOST_IP=10.99.0.1
# Packages of the first stage; the rest comes from scripts/install-host.sh in the guest.
GUEST_PACKAGES=linux-image-amd64,systemd-sysv,udev,openssh-server,iproute2,ifupdown,procps,kmod

say() { printf 'vm: %s\n' "$*" >&2; }
die() { printf 'vm: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it makes namespaces, taps and disk images"

guest_ip() { echo "10.99.0.$((10 + $1))"; }
valid_index() { [[ $1 =~ ^[1-3]$ ]] || die "guest index '$1' must be 1, 2 or 3"; }

ensure_tools() {
  local missing=() p
  for p in qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------
# The image. Every function from here to the end of image_functions is an
# input of the cache key: change one and the image is rebuilt.

# guest_init is PID 1 for a moment at every boot: it unpacks the seed disk
# (serial "orchseed") over / before systemd starts, so that systemd finds the
# run's units, config and addresses as if they had always been installed.
guest_init() {
  cat <<'EOF'
#!/bin/sh
# Installed by orchestrate's scripts/vm.sh (the VM test harness, not the
# product). Before systemd starts, unpack this boot's seed disk over /.
for b in /sys/block/vd*; do
  [ "$(cat "$b/serial" 2>/dev/null)" = orchseed ] || continue
  if tar -x -p --numeric-owner --no-overwrite-dir -f "/dev/${b##*/}" -C /; then
    echo "orchestrate-vm: seed /dev/${b##*/} unpacked" >/dev/console
  else
    echo "orchestrate-vm: seed /dev/${b##*/} could not be unpacked" >/dev/console
  fi
done
exec /sbin/init "$@"
EOF
}

# guest_provision runs in the booted guest of stage 2, over ssh, as the
# Vagrantfile's provisioner would, with the checkout's scripts/install-host.sh
# beside it.
guest_provision() {
  cat <<'EOF'
#!/bin/bash
# Stage 2 of scripts/vm.sh's image build, inside the guest.
set -euo pipefail
cd /root/vm-build
# Guests boot with the kernel and initrd taken from the stage-1 root
# (-kernel/-initrd), never the guest's own /boot: rebuilding it whenever a
# package asks took minutes under emulation for nothing.
sed -i 's/^update_initramfs=.*/update_initramfs=no/' /etc/initramfs-tools/update-initramfs.conf
bash ./install-host.sh
mkdir -p /etc/systemd/system/podman.service.d
# The Podman settings the Vagrantfile gives its VMs.
printf '[Service]\nEnvironment=CONTAINERS_CONF=/etc/orchestrate/containers.conf\nEnvironment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' \
  >/etc/systemd/system/podman.service.d/orchestrate.conf
systemctl enable podman.socket
echo "criu: $(command -v criu), $(criu --version | head -n1), check: $(criu check 2>&1 | tail -n1)"
echo "private criu root: $(ls -d /opt/orchestrate/criu/root 2>/dev/null || echo none)"
apt-get clean
rm -f /etc/network/interfaces.d/eth0 /etc/resolv.conf /root/.ssh/authorized_keys
rm -rf /root/vm-build
echo "provision ok"
EOF
}

# stage1 ROOT MIRROR PROXY: the Debian root, made on this machine.
stage1() {
  local root=$1 mirror=$2 proxy=$3
  http_proxy=$proxy debootstrap --variant=minbase --include="$GUEST_PACKAGES" "$SUITE" "$root" "$mirror"
  echo "LABEL=orchroot / ext4 rw,relatime 0 1" >"$root/etc/fstab"
  : >"$root/etc/machine-id"
  echo "orchestrate-vm" >"$root/etc/hostname"
  if [ -n "$proxy" ]; then echo "Acquire::http::Proxy \"$proxy\";" >"$root/etc/apt/apt.conf.d/90orchestrate-proxy"; fi
  mkdir -p "$root/usr/local/lib/orchestrate-vm" "$root/root/.ssh"
  chmod 0700 "$root/root/.ssh"
  guest_init >"$root/usr/local/lib/orchestrate-vm/init"
  chmod 0755 "$root/usr/local/lib/orchestrate-vm/init"
  printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' >"$root/etc/network/interfaces"
  # Timers that would compete for the one emulated CPU.
  systemctl --root="$root" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
  chroot "$root" apt-get clean
}

# cmdline: the guests' kernel command line (it names the init above).
cmdline() { echo "root=LABEL=orchroot rw console=ttyS0 net.ifnames=0 init=/usr/local/lib/orchestrate-vm/init mitigations=off"; }
# End of the image's inputs.
# ---------------------------------------------------------------------------

# stage1_key: the inputs of stage 1; image_key: of the whole image.
stage1_key() {
  { declare -f guest_init stage1 cmdline; echo "$SUITE $GUEST_PACKAGES"; } | sha256sum | cut -c1-16
}

image_key() {
  {
    stage1_key
    declare -f guest_provision
    cat scripts/install-host.sh
  } | sha256sum | cut -c1-16
}

# build_stage1 DIR: the stage-1 disk, kernel and initrd in DIR (cached on its own, so
# that a change of install-host.sh only repeats stage 2).
build_stage1() {
  local dir=$1 apt mirror proxy work start
  [ -f "$dir/ok" ] && return
  start=$(date +%s)
  apt=$(bash scripts/install-host.sh --print-apt) || die "cannot read the apt mirror"
  mirror=$(sed -n 's/^mirror=//p' <<<"$apt")
  proxy=$(sed -n 's/^proxy=//p' <<<"$apt")
  work=$dir.tmp
  rm -rf "$work"
  mkdir -p "$work"
  say "stage 1: debootstrap $SUITE from $mirror into $work (about 3 minutes)"
  stage1 "$work/root" "$mirror" "$proxy" >"$work/stage1.log" 2>&1 ||
    die "stage 1 failed: $(grep -E '^E:|error' "$work/stage1.log" | tail -n2 | tr '\n' ' ')(log: $work/stage1.log)"
  cp -L "$work/root/vmlinuz" "$work/vmlinuz"
  cp -L "$work/root/initrd.img" "$work/initrd.img"
  mkfs.ext4 -q -L orchroot -d "$work/root" "$work/disk.raw" 6G >>"$work/stage1.log" 2>&1 || die "mkfs.ext4 failed (log: $work/stage1.log)"
  rm -rf "$work/root"
  echo "stage1_s=$(($(date +%s) - start))" >"$work/ok"
  rm -rf "$dir"
  mv "$work" "$dir"
  say "stage 1 took $(($(date +%s) - start)) s"
}

# cmd_image runs in a subshell of its own: the cache's lock (fd 9) and the
# stage-2 trap end with it. Held by the calling shell, the lock passed on to
# `vm.sh test`'s go test, whose own `vm.sh image` then waited for it forever.
cmd_image() (
  ensure_tools
  local key dir s1
  key=$(image_key)
  dir=$CACHE/$key
  s1=$CACHE/stage1-$(stage1_key)
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  if ! flock -n 9; then
    say "another image build holds $CACHE/.lock: waiting for it (at most 60 minutes)"
    flock -w 3600 9 || die "the image lock $CACHE/.lock was not released within 60 minutes"
  fi
  if [ -f "$dir/ok" ]; then
    echo "$dir"
    return
  fi
  local start work
  start=$(date +%s)
  build_stage1 "$s1"
  work=$dir.tmp
  rm -rf "$work"
  mkdir -p "$work"
  cp "$s1/vmlinuz" "$s1/initrd.img" "$work/"
  cp --sparse=always "$s1/disk.raw" "$work/disk.raw"
  say "stage 2: the guest runs scripts/install-host.sh (several minutes under emulation; log: $work/stage2.log)"
  local seed=$work/seed port
  mkdir -p "$seed/root/.ssh" "$seed/etc/network/interfaces.d"
  chmod 0755 "$seed"
  chmod 0700 "$seed/root" "$seed/root/.ssh"
  ssh-keygen -q -t ed25519 -N '' -f "$work/id_ed25519" >/dev/null
  install -m 0600 "$work/id_ed25519.pub" "$seed/root/.ssh/authorized_keys"
  # QEMU's user networking (in this process's namespace), only for apt; ssh
  # reaches the guest through a forward on this machine's loopback.
  printf 'auto eth0\niface eth0 inet static\n  address 10.99.0.15/24\n  gateway 10.99.0.2\n' >"$seed/etc/network/interfaces.d/eth0"
  echo "nameserver 10.99.0.3" >"$seed/etc/resolv.conf"
  tar -C "$seed" --owner=0 --group=0 --numeric-owner -cf "$work/seed.tar" .
  port=$((20000 + RANDOM % 10000))
  qemu-system-x86_64 -accel tcg,tb-size=256 -cpu "$CPU" -smp "$CPUS" -m "$MEM" -no-reboot \
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" -append "$(cmdline)" \
    -drive "file=$work/disk.raw,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$work/seed.tar,if=none,id=seed,format=raw,readonly=on" -device virtio-blk-pci,drive=seed,serial=orchseed \
    -netdev "user,id=n0,net=10.99.0.0/24,host=10.99.0.2,dns=10.99.0.3,dhcpstart=10.99.0.16,hostfwd=tcp:127.0.0.1:$port-10.99.0.15:22" \
    -device virtio-net-pci,netdev=n0 \
    -serial "file:$work/stage2.console" -monitor none -display none -daemonize -pidfile "$work/qemu.pid" \
    >"$work/qemu.log" 2>&1 9>&- || die "stage 2: QEMU failed: $(cat "$work/qemu.log")"
  local qpid t0
  qpid=$(cat "$work/qemu.pid")
  # shellcheck disable=SC2064
  trap "kill $qpid 2>/dev/null || true" EXIT
  local ssh=(ssh -p "$port" -i "$work/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o LogLevel=ERROR -o ConnectTimeout=5 -o BatchMode=yes root@127.0.0.1)
  t0=$(date +%s)
  until "${ssh[@]}" true 2>/dev/null; do
    kill -0 "$qpid" 2>/dev/null || die "stage 2: the guest stopped (console: $work/stage2.console)"
    (($(date +%s) - t0 < BOOT_TIMEOUT)) || die "stage 2: no ssh within $BOOT_TIMEOUT s (console: $work/stage2.console)"
    sleep 3
  done
  say "stage 2: guest up after $(($(date +%s) - t0)) s; provisioning"
  "${ssh[@]}" 'mkdir -p /root/vm-build && cat >/root/vm-build/install-host.sh' <scripts/install-host.sh
  guest_provision | "${ssh[@]}" 'cat >/root/vm-build/provision.sh'
  if ! "${ssh[@]}" 'bash /root/vm-build/provision.sh' >"$work/stage2.log" 2>&1; then
    die "stage 2 failed: $(tail -n3 "$work/stage2.log" | tr '\n' ' ')(log: $work/stage2.log)"
  fi
  sed 's/^/  /' "$work/stage2.log" >&2
  "${ssh[@]}" 'sync; systemctl poweroff' >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do kill -0 "$qpid" 2>/dev/null || break; sleep 1; done
  kill "$qpid" 2>/dev/null || true
  trap - EXIT
  rm -rf "$seed" "$work/seed.tar" "$work/id_ed25519" "$work/id_ed25519.pub" "$work/qemu.pid"
  echo "$(cat "$s1/ok") stage2_s=$(($(date +%s) - start))" >"$work/ok"
  rm -rf "$dir"
  mv "$work" "$dir"
  # One image at a time: older ones go.
  find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name "$(basename "$s1")" -exec rm -rf {} + 2>/dev/null || true
  say "image $key built in $(($(date +%s) - start)) s"
  echo "$dir"
)

# ---------------------------------------------------------------------------
# Guests.

ssh_opts() {
  echo "-i $RUN/id_ed25519 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 -o BatchMode=yes -o ServerAliveInterval=5 -o ServerAliveCountMax=6"
}

cmd_ssh() {
  valid_index "${1:-}"
  local i=$1
  shift
  [ -f "$RUN/id_ed25519" ] || die "no guests are up (no $RUN/id_ed25519)"
  # shellcheck disable=SC2046
  exec ip netns exec "$NS" ssh $(ssh_opts) "root@$(guest_ip "$i")" "$@"
}

cmd_push() {
  valid_index "${1:-}"
  [ $# -eq 3 ] || die "usage: vm.sh push I SRC DST"
  # shellcheck disable=SC2046
  ip netns exec "$NS" scp -q $(ssh_opts) "$2" "root@$(guest_ip "$1"):$3"
}

cmd_wait_ssh() {
  valid_index "${1:-}"
  local i=$1 secs=${2:-$BOOT_TIMEOUT} start
  start=$(date +%s)
  while true; do
    # shellcheck disable=SC2046
    if ip netns exec "$NS" ssh $(ssh_opts) "root@$(guest_ip "$i")" true 2>/dev/null; then
      return 0
    fi
    if [ -f "$RUN/vm$i.pid" ] && ! kill -0 "$(cat "$RUN/vm$i.pid")" 2>/dev/null; then
      die "guest $i's QEMU exited: $(tail -n3 "$RUN/vm$i.console" 2>/dev/null | tr '\n' ' ')"
    fi
    (($(date +%s) - start < secs)) || die "guest $i did not answer ssh within $secs s (console: $RUN/vm$i.console)"
    sleep 2
  done
}

# agent_config I N: guest I's /etc/orchestrate/orchestrate.yaml in a set of N.
agent_config() {
  local i=$1 n=$2 ip
  ip=$(guest_ip "$i")
  cat <<EOF
# Written by scripts/vm.sh for guest vm$i of $n.
node:
  name: vm$i
  data_dir: /var/lib/orchestrate
cluster:
  bind: $ip:7946
  join: ["$(guest_ip 1):7946"]
  bootstrap_expect: $n
  secret_file: /etc/orchestrate/cluster.key
  # Emulated guests on a shared machine stall for seconds at a time: slower
  # failure detection than on real hosts keeps the cluster from flapping.
  probe_interval: 3s
  probe_timeout: 2s
  suspicion_mult: 6
  raft_heartbeat_timeout: 5s
  raft_election_timeout: 5s
api:
  bind: $ip:7948
  socket: /run/orchestrate/agent.sock
engine:
  type: podman
  socket: unix:///run/podman/podman.sock
transfer:
  bind: $ip:7922
EOF
  if [ -n "${VM_CONFIG_APPEND:-}" ]; then printf '%s\n' "$VM_CONFIG_APPEND"; fi
}

# make_seed I N: the tar unpacked over guest I's / at every boot.
make_seed() {
  local i=$1 n=$2 s=$RUN/seed$i j
  rm -rf "$s"
  mkdir -p "$s"
  cp -a "$RUN/stage/." "$s/"
  chmod 0755 "$s"
  agent_config "$i" "$n" >"$s/etc/orchestrate/orchestrate.yaml"
  chmod 0600 "$s/etc/orchestrate/orchestrate.yaml"
  install -m 0600 "$RUN/cluster.key" "$s/etc/orchestrate/cluster.key"
  # What `systemctl enable orchestrate` does, done here so that the first
  # boot already starts the agent the way every later one does.
  systemctl --root="$s" enable orchestrate.service >/dev/null 2>&1 ||
    die "systemctl --root enable orchestrate.service failed in the seed"
  mkdir -p "$s/etc/network/interfaces.d" "$s/root/.ssh" "$s/var/cache/orchestrate"
  chmod 0700 "$s/root" "$s/root/.ssh"
  echo "vm$i" >"$s/etc/hostname"
  printf 'auto eth0\niface eth0 inet static\n  address %s/24\n' "$(guest_ip "$i")" >"$s/etc/network/interfaces.d/eth0"
  {
    echo "127.0.0.1 localhost"
    echo "127.0.1.1 vm$i"
    for j in 1 2 3; do echo "$(guest_ip "$j") vm$j"; done
  } >"$s/etc/hosts"
  install -m 0600 "$RUN/id_ed25519.pub" "$s/root/.ssh/authorized_keys"
  # The agent calls Podman every few seconds. Socket activation's service
  # exits after 5 s idle, and under emulation every call then waited for a
  # new service to start (longer than the agent's 5 s deadline): keep it up.
  mkdir -p "$s/etc/systemd/system/podman.service.d"
  printf '[Service]\nExecStart=\nExecStart=/usr/bin/podman $LOGGING system service --time=0\n' \
    >"$s/etc/systemd/system/podman.service.d/orchestrate-vm.conf"
  cp "$RUN/workload-image.tar" "$s/var/cache/orchestrate/workload-image.tar"
  tar -C "$s" --owner=0 --group=0 --numeric-owner -cf "$RUN/seed$i.tar" .
  rm -rf "$s"
}

ensure_netns() {
  ip netns list | awk '{print $1}' | grep -qx "$NS" || ip netns add "$NS"
  ip -n "$NS" link set lo up
  if ! ip -n "$NS" link show "$BR" >/dev/null 2>&1; then
    ip -n "$NS" link add "$BR" type bridge
    ip -n "$NS" addr add "$HOST_IP/24" dev "$BR"
    ip -n "$NS" link set "$BR" up
  fi
}

boot_guest() {
  local i=$1 img=$2 tap=ovmtap$i mac
  mac=$(printf '52:54:00:99:00:%02x' $((10 + i)))
  ip -n "$NS" link show "$tap" >/dev/null 2>&1 || ip -n "$NS" tuntap add dev "$tap" mode tap
  ip -n "$NS" link set "$tap" master "$BR" up
  qemu-img create -q -f qcow2 -F raw -b "$img/disk.raw" "$DATA/vm$i.qcow2"
  ip netns exec "$NS" qemu-system-x86_64 -name "vm$i$TAG" -accel tcg,tb-size=256 -cpu "$CPU" -smp "$CPUS" -m "$MEM" \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$(cmdline)" \
    -drive "file=$DATA/vm$i.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -drive "file=$RUN/seed$i.tar,if=none,id=seed,format=raw,readonly=on" -device virtio-blk-pci,drive=seed,serial=orchseed \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$mac" \
    -serial "file:$RUN/vm$i.console" -monitor none -display none -daemonize -pidfile "$RUN/vm$i.pid" \
    >"$RUN/vm$i.qemu.log" 2>&1 || die "QEMU for guest $i failed: $(cat "$RUN/vm$i.qemu.log")"
}

cmd_up() {
  local n=${1:-}
  [[ $n =~ ^[1-3]$ ]] || die "usage: vm.sh up N (1-3 guests)"
  [ ! -e "$RUN/up" ] || die "guests of set '$TAG' are already up; vm.sh down first"
  trap 'cmd_down >/dev/null 2>&1' ERR
  trap 'cmd_down >/dev/null 2>&1; exit 130' INT TERM
  local img start
  img=$(cmd_image)
  start=$(date +%s)
  mkdir -p "$RUN" "$DATA"
  chmod 0700 "$RUN" "$DATA"
  touch "$RUN/up"
  if [ -n "${VM_OWNER_PID:-}" ]; then start_reaper "$VM_OWNER_PID"; fi
  # Per run: this checkout's install, a secret, an ssh key, the workload image.
  rm -rf "$RUN/stage"
  make --no-print-directory install DESTDIR="$RUN/stage" >"$RUN/install.log" 2>&1 ||
    die "make install DESTDIR=$RUN/stage failed: $(tail -n3 "$RUN/install.log")"
  bin/orchestrate keygen "$RUN/cluster.key" >/dev/null
  ssh-keygen -q -t ed25519 -N '' -f "$RUN/id_ed25519" <<<y >/dev/null
  cp "$(bash scripts/build-workload-image.sh)" "$RUN/workload-image.tar"
  ensure_netns
  local i
  for i in $(seq 1 "$n"); do
    make_seed "$i" "$n"
    boot_guest "$i" "$img"
  done
  for i in $(seq 1 "$n"); do
    cmd_wait_ssh "$i"
    echo "vm$i ip=$(guest_ip "$i")"
  done
  echo "$n" >"$RUN/up"
  say "$n guest(s) up in $(($(date +%s) - start)) s"
  trap - ERR INT TERM
}

# start_reaper OWNER: a watcher, in a session of its own (Ctrl-C and a killed
# process group leave it alone), that takes this set down once OWNER has
# exited. It stops watching when the set goes down otherwise: RUN/owner holds
# a token of this set, which `down` removes and a later `up` replaces.
start_reaper() {
  local owner=$1 token
  [[ $owner =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null || die "VM_OWNER_PID '$owner' is not a running process"
  token=$owner.$(date +%s%N)
  echo "$token" >"$RUN/owner"
  # shellcheck disable=SC2016
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null; do
      [ "$(cat "$2" 2>/dev/null)" = "$3" ] || exit 0
      sleep 2
    done
    [ "$(cat "$2" 2>/dev/null)" = "$3" ] || exit 0
    exec env OSIM_TAG="$4" bash "$5" down' \
    vm-reaper "$owner" "$RUN/owner" "$token" "$TAG" "$PWD/scripts/vm.sh" </dev/null >/dev/null 2>&1 &
}

cmd_shape() {
  local rate=${1:-} tap
  [ -n "$rate" ] || die "usage: vm.sh shape RATE|off"
  for tap in $(ip -n "$NS" -o link show type tun 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    if [ "$rate" = off ]; then
      tc -n "$NS" qdisc del dev "$tap" root 2>/dev/null || true
    else
      tc -n "$NS" qdisc replace dev "$tap" root tbf rate "$rate" burst 128kb latency 100ms
    fi
  done
}

cmd_console() {
  valid_index "${1:-}"
  cat "$RUN/vm$1.console"
}

cmd_down() {
  local f pid
  for f in "$RUN"/vm*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    # Only a QEMU this script started: the pid file names it.
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "^qemu-system-x86_64 -name vm"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  if ip netns list | awk '{print $1}' | grep -qx "$NS"; then
    for pid in $(ip netns pids "$NS" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
  fi
  rm -rf "$RUN" "$DATA"
}

cmd_test() {
  local run=${1:-.}
  trap 'cmd_down >/dev/null 2>&1' EXIT
  trap 'exit 130' INT TERM
  cmd_image >/dev/null
  export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--tags=remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp}
  ORCHESTRATE_VM_TESTS=all go test -p 1 -count=1 -timeout 90m -v -run "$run" ./internal/vmtest/
}

case "${1:-}" in
  image) cmd_image ;;
  up) shift; cmd_up "$@" ;;
  ssh) shift; cmd_ssh "$@" ;;
  push) shift; cmd_push "$@" ;;
  wait-ssh) shift; cmd_wait_ssh "$@" ;;
  shape) shift; cmd_shape "$@" ;;
  console) shift; cmd_console "$@" ;;
  down) cmd_down ;;
  test) shift; cmd_test "$@" ;;
  key) image_key ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2 ;;
esac
