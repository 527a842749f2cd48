#!/usr/bin/env bash
# check-clean-install.sh proves, on every `make test`, that
# scripts/install-host.sh works on a machine that has nothing: it builds a
# fresh Debian 12 minbase root (debootstrap from the machine's own mirror),
# copies in the machine's apt sources, and runs install-host.sh inside it, in
# a mount namespace of its own whose root is a mount point (as on a host;
# CRIU's check refuses a plain chroot's mount tree). Packages, the choice
# between the distribution's CRIU and the private one, the private CRIU's
# install and `criu check` all run from nothing. The root is removed at the
# end, also on failure or Ctrl-C. About 80 s.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { printf 'check-clean-install: %s\n' "$*"; }
die() { printf 'check-clean-install: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
# Everything runs in a mount namespace of its own: what debootstrap or the
# install mounts inside the root goes with it, however the script ends.
if [ -z "${ORCHESTRATE_CLEAN_NS:-}" ]; then
  exec unshare --mount --fork env ORCHESTRATE_CLEAN_NS=1 bash "$0" "$@"
fi
mount --make-rprivate /
start=$(date +%s)
root=$(mktemp -d /var/tmp/orchestrate-clean-root.XXXXXX)
pid=
cleanup() {
  # Each step runs in a process group of its own (setsid): all of it goes.
  [ -z "$pid" ] || { kill -KILL -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
  grep -o " $root/[^ ]*" /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
  rm -rf --one-file-system "$root" "$root.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mirror=$(bash scripts/install-host.sh --print-apt | sed -n 's/^mirror=//p')
proxy=$(bash scripts/install-host.sh --print-apt | sed -n 's/^proxy=//p')
[ -n "$mirror" ] || die "no Debian mirror in this machine's apt sources"
say "building a Debian 12 minbase root from $mirror"
# In the background, so that a signal is handled at once (the trap stops it).
http_proxy=$proxy setsid debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 &
pid=$!
wait "$pid" || { tail -5 "$root.log" >&2; die "debootstrap failed"; }
pid=
rm -f "$root/etc/apt/sources.list"
cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
[ ! -f /etc/apt/sources.list ] || cp /etc/apt/sources.list "$root/etc/apt/sources.list"
cp -a /etc/apt/apt.conf.d/. "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/src" && cp -a scripts "$root/src/"

# A namespace of its own again, to make the root a mount point and pivot
# into it.
setsid unshare --mount --fork --kill-child bash -euc '
root=$1
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"; mount --rbind /dev "$root/dev"
cd "$root" && mkdir .old && pivot_root . .old && umount -l /.old && rmdir /.old
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root bash /src/scripts/install-host.sh
/usr/local/sbin/criu check >/dev/null || { echo "criu check fails in the clean root" >&2; exit 1; }
' _ "$root" &
pid=$! # in the background, so that a signal is handled at once
wait "$pid" || die "install-host.sh did not work from nothing (output above)"
pid=
say "ok in $(( $(date +%s) - start )) s: install-host.sh works on a fresh Debian 12 root, and its CRIU passes criu check"
