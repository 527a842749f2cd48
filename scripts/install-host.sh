#!/usr/bin/env bash
# install-host.sh prepares an edge host (or a CI machine) for orchestrate.
#
# It is idempotent: every step checks first and skips work that is already
# done, so a second run takes a few seconds. It never changes the system's
# apt sources and never touches libc.
#
#   1. Debian packages: podman, runc, conmon, netavark, openssh, zstd, busybox-static, ...
#   2. A CRIU that works on the running kernel. If `criu check` fails, or CRIU is
#      older than 4.2 on a kernel >= 6.16 (criu issue 2718: TCP sockets cannot be
#      dumped), it installs Debian sid's CRIU 4.2 under $CRIU_PREFIX, running on
#      the loader and libraries of a private Debian 13 root, and puts a `criu`
#      wrapper on PATH ($CRIU_WRAPPER, default /usr/local/sbin/criu).
#   3. Podman settings this kind of host needs (runc, cgroupfs, lower ulimits) in
#      /etc/orchestrate/containers.conf, used through CONTAINERS_CONF.
#
# Environment:
#   ORCHESTRATE_SKIP_APT=1   do not install Debian packages (they must be present)
#   CRIU_PREFIX              where a private CRIU goes (default /opt/orchestrate/criu)
#   CRIU_WRAPPER             the wrapper's path (default /usr/local/sbin/criu)
#   DEBIAN_MIRROR            mirror for debootstrap and sid packages
set -euo pipefail

CRIU_PREFIX=${CRIU_PREFIX:-/opt/orchestrate/criu}
CRIU_WRAPPER=${CRIU_WRAPPER:-/usr/local/sbin/criu}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CONF_DIR=${ORCHESTRATE_CONF_DIR:-/etc/orchestrate}

PACKAGES=(podman runc conmon netavark aardvark-dns openssh-server openssh-client
  zstd iproute2 iptables busybox-static debootstrap ca-certificates curl)

say() { printf 'install-host: %s\n' "$*"; }
die() { printf 'install-host: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and writes under /opt and /etc"

# version_ge A B: true when dotted version A >= B.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

install_packages() {
  if [ "${ORCHESTRATE_SKIP_APT:-0}" = 1 ]; then
    say "skipping Debian packages (ORCHESTRATE_SKIP_APT=1)"
    return
  fi
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: all present"
    return
  fi
  say "Debian packages: installing ${missing[*]}"
  apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

# criu_ok CMD: CMD is a CRIU that passes `criu check` and is new enough for this kernel.
criu_ok() {
  local criu=$1 ver kernel
  [ -x "$criu" ] || command -v "$criu" >/dev/null 2>&1 || return 1
  ver=$("$criu" --version 2>/dev/null | awk '/^Version:/{print $2}') || return 1
  [ -n "$ver" ] || return 1
  "$criu" check >/dev/null 2>&1 || { say "CRIU $ver at $criu: 'criu check' fails on kernel $(uname -r)"; return 1; }
  kernel=$(uname -r | cut -d- -f1)
  if version_ge "$kernel" 6.16 && ! version_ge "$ver" 4.2; then
    say "CRIU $ver at $criu cannot dump TCP/UDP sockets on kernel $kernel (needs >= 4.2)"
    return 1
  fi
  say "CRIU $ver at $criu works on kernel $(uname -r)"
  return 0
}

install_private_criu() {
  local root=$CRIU_PREFIX/root sid=$CRIU_PREFIX/sid apt=$CRIU_PREFIX/apt
  mkdir -p "$CRIU_PREFIX"
  if [ ! -x "$root/lib64/ld-linux-x86-64.so.2" ]; then
    say "building a private Debian 13 root for CRIU's libraries in $root (about 40 s)"
    rm -rf "$root.tmp"
    debootstrap --variant=minbase trixie "$root.tmp" "$DEBIAN_MIRROR" >"$CRIU_PREFIX/debootstrap.log" 2>&1 ||
      die "debootstrap trixie failed, see $CRIU_PREFIX/debootstrap.log"
    mv "$root.tmp" "$root"
  fi
  if [ ! -x "$sid/usr/sbin/criu" ]; then
    say "fetching CRIU 4.2 from Debian sid with a private apt configuration (system sources untouched)"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/state" "$apt/debs"
    : >"$apt/state/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR sid main" >"$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=$apt/state/status"
      -o APT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq || die "apt-get update of the private sid list failed"
    (cd "$apt/debs" && apt-get "${opts[@]}" download criu libcompel1 libnet9 libnl-3-200 >/dev/null) ||
      die "downloading CRIU from sid failed"
    rm -rf "$sid.tmp" && mkdir -p "$sid.tmp"
    for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$sid.tmp"; done
    rm -rf "$sid" && mv "$sid.tmp" "$sid"
  fi
  mkdir -p "$(dirname "$CRIU_WRAPPER")"
  cat >"$CRIU_WRAPPER.tmp" <<EOF
#!/bin/sh
# Installed by orchestrate's scripts/install-host.sh: CRIU 4.2 from Debian sid,
# run with the loader and libraries of a private Debian 13 root ($root),
# because the system's libc is too old for it.
exec $root/lib64/ld-linux-x86-64.so.2 --library-path $sid/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu $sid/usr/sbin/criu "\$@"
EOF
  chmod 0755 "$CRIU_WRAPPER.tmp"
  mv "$CRIU_WRAPPER.tmp" "$CRIU_WRAPPER"
}

ensure_criu() {
  if criu_ok "$CRIU_WRAPPER"; then return; fi
  if [ "$(command -v criu || true)" != "$CRIU_WRAPPER" ] && criu_ok criu; then return; fi
  say "installing CRIU 4.2 privately under $CRIU_PREFIX"
  install_private_criu
  criu_ok "$CRIU_WRAPPER" || die "the private CRIU at $CRIU_WRAPPER does not pass 'criu check'; run '$CRIU_WRAPPER check' to see why"
  case ":$PATH:" in
    *":$(dirname "$CRIU_WRAPPER"):"*) ;;
    *) say "note: $(dirname "$CRIU_WRAPPER") is not on PATH; runc finds criu through PATH" ;;
  esac
}

ensure_podman_conf() {
  mkdir -p "$CONF_DIR"
  local f=$CONF_DIR/containers.conf
  local want
  want=$(cat <<'EOF'
# Written by orchestrate's scripts/install-host.sh. Podman settings this kind of
# host needs: crun fails on hybrid cgroups, systemd is absent, and the default
# ulimits cannot be set by runc here. Use with CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
EOF
)
  if [ -f "$f" ] && [ "$(cat "$f")" = "$want" ]; then
    say "Podman settings: $f up to date"
  else
    printf '%s\n' "$want" >"$f"
    say "Podman settings: wrote $f (runc, cgroupfs, ulimits)"
  fi
}

install_packages
ensure_criu
ensure_podman_conf
hash -r
say "done: podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), criu $("$(command -v criu || echo "$CRIU_WRAPPER")" --version | awk '/^Version:/{print $2}')"
