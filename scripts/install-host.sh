#!/usr/bin/env bash
# install-host.sh prepares an edge host (or a CI machine) for orchestrate.
#
# It is idempotent: every step checks first and skips work that is already
# done, so a second run takes a few seconds. It never changes the system's
# apt sources and never touches libc.
#
#   1. Debian packages: podman, runc, conmon, netavark, openssh, zstd, busybox-static, ...
#   2. A CRIU that works on the running kernel. The distribution's own comes
#      first: if no CRIU is installed, it installs Debian's `criu` package and
#      keeps it when it passes `criu check` and is new enough for the kernel
#      (on Debian 12's kernel 6.1 it is); otherwise it purges that package again.
#      If `criu check` fails, or CRIU is
#      older than 4.2 on a kernel >= 6.16 (criu issue 2718: TCP sockets cannot be
#      dumped), it builds a private Debian 13 root under $CRIU_PREFIX with
#      debootstrap and lets apt inside that root install Debian sid's CRIU: apt
#      resolves whatever sid's criu depends on (trixie first, sid where a newer
#      version is needed; sid is pinned low for everything else). A `criu`
#      wrapper ($CRIU_WRAPPER, default /usr/local/sbin/criu) runs it with the
#      root's own loader and libraries. The system's apt sources and libc are
#      never touched.
#   3. Podman settings this kind of host needs (runc, cgroupfs, lower ulimits) in
#      /etc/orchestrate/containers.conf, used through CONTAINERS_CONF.
#
# The Debian mirror (and an apt proxy, if one is configured) comes from this
# machine's own apt configuration, so the script follows whatever mirror the
# operator chose.
#
# Environment:
#   ORCHESTRATE_SKIP_APT=1       do not install Debian packages (they must be present)
#   ORCHESTRATE_PRIVATE_CRIU=1   install the private CRIU even when the system's works
#                                (the from-scratch check in `make test` uses it)
#   CRIU_PREFIX                  where a private CRIU goes (default /opt/orchestrate/criu)
#   CRIU_WRAPPER                 the wrapper's path (default /usr/local/sbin/criu)
#   DEBIAN_MIRROR                override the mirror read from the apt sources
#
# `install-host.sh --print-apt` prints the mirror and apt proxy it would use
# (mirror=URI, proxy=URI lines) and changes nothing; scripts/vm.sh builds its
# guests from the same mirror.
set -euo pipefail

CRIU_PREFIX=${CRIU_PREFIX:-/opt/orchestrate/criu}
CRIU_WRAPPER=${CRIU_WRAPPER:-/usr/local/sbin/criu}
CONF_DIR=${ORCHESTRATE_CONF_DIR:-/etc/orchestrate}

PACKAGES=(podman runc conmon netavark aardvark-dns openssh-server openssh-client
  zstd iproute2 iptables busybox-static debootstrap ca-certificates curl)

say() { printf 'install-host: %s\n' "$*"; }
die() { printf 'install-host: error: %s\n' "$*" >&2; exit 1; }


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

# criu_fits_kernel VERSION: false when CRIU VERSION is known not to work on
# the running kernel: before 4.2 it cannot dump TCP/UDP sockets on kernels >=
# 6.16 (criu issue 2718), and Debian 12's 3.17 fails `criu check` there too.
criu_fits_kernel() {
  ! { version_ge "$(uname -r | cut -d- -f1)" 6.16 && ! version_ge "$1" 4.2; }
}

# criu_ok CMD: CMD is a CRIU that passes `criu check` and is new enough for this kernel.
criu_ok() {
  local criu=$1 ver
  [ -x "$criu" ] || command -v "$criu" >/dev/null 2>&1 || return 1
  ver=$("$criu" --version 2>/dev/null | awk '/^Version:/{print $2}') || true
  [ -n "$ver" ] || { say "CRIU at $criu does not run: $(criu_diagnose "$criu")"; return 1; }
  "$criu" check >/dev/null 2>&1 || { say "CRIU $ver at $criu on kernel $(uname -r): $(criu_diagnose "$criu")"; return 1; }
  if ! criu_fits_kernel "$ver"; then
    say "CRIU $ver at $criu cannot dump TCP/UDP sockets on kernel $(uname -r) (needs >= 4.2)"
    return 1
  fi
  say "CRIU $ver at $criu works on kernel $(uname -r)"
  return 0
}

# debian_mirror prints the URI of the machine's own Debian archive: the first
# apt source (deb822 *.sources or one-line sources.list) that serves the
# system's release (not its -security or -updates suites).
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local codename uri
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release; set DEBIAN_MIRROR"
  uri=$(
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      # One stanza per paragraph: print its first URI when it is a deb source
      # whose suites include the release itself.
      awk -v cn="$codename" '
        function flush() { if (deb && hit && uri != "") print uri; deb=0; hit=0; uri="" }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]*#/ { next }
        tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb=1 }
        tolower($1) == "uris:" { uri=$2 }
        tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == cn) hit=1 }
        tolower($1) == "enabled:" && tolower($2) == "no" { deb=0 }
        END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      # deb [options] URI SUITE COMPONENTS...
      sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk -v cn="$codename" '$1 == "deb" && $3 == cn {print $2}'
    done | head -n1
  )
  uri=$(echo "$uri" | head -n1)
  [ -n "$uri" ] || die "no apt source for Debian $codename in /etc/apt/sources.list{,.d}; set DEBIAN_MIRROR"
  echo "${uri%/}"
}

# apt_proxy prints the machine's apt HTTP proxy, if one is configured.
apt_proxy() {
  apt-config dump 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' | head -n1
}

# criu_diagnose CMD: why CMD does not work, in one or two lines: a missing
# shared library, or the failing lines of `criu check`.
criu_diagnose() {
  local criu=$1 out
  if ! out=$("$criu" --version 2>&1); then
    echo "'$criu --version' fails: $(echo "$out" | grep -m1 -E 'error while loading|cannot open|not found|No such' || echo "$out" | tail -n1)"
    return
  fi
  out=$("$criu" check 2>&1) && { echo "'criu check' passes"; return; }
  echo "'criu check' fails: $(echo "$out" | grep -E 'Error|error|fail|not supported|Unexpected' | grep -v 'kdat cache' | tail -n3 | tr '\n' ' ')"
}

install_private_criu() {
  local root=$CRIU_PREFIX/root mirror proxy
  mirror=$(debian_mirror)
  proxy=$(apt_proxy)
  say "Debian mirror: $mirror${proxy:+ (apt proxy $proxy)}"
  mkdir -p "$CRIU_PREFIX"
  chmod 0755 "$CRIU_PREFIX"
  if [ ! -x "$root/lib64/ld-linux-x86-64.so.2" ] || [ ! -x "$root/usr/bin/apt-get" ]; then
    say "building a private Debian 13 root for CRIU in $root (about 30 s)"
    rm -rf "$root.tmp"
    http_proxy=$proxy debootstrap --variant=minbase trixie "$root.tmp" "$mirror" >"$CRIU_PREFIX/debootstrap.log" 2>&1 ||
      die "debootstrap trixie from $mirror failed: $(grep -E '^E:' "$CRIU_PREFIX/debootstrap.log" | tail -n1) (full log: $CRIU_PREFIX/debootstrap.log)"
    rm -rf "$root"
    mv "$root.tmp" "$root"
  fi
  # apt inside the root: trixie for everything, sid pinned low so that only
  # criu, libcompel1 and whatever they need at a newer version come from it.
  # sid's Release file carries a Valid-Until that a mirror snapshot outlives.
  cat >"$root/etc/apt/sources.list.d/orchestrate-sid.sources" <<EOF
Types: deb
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
Check-Valid-Until: no
EOF
  cat >"$root/etc/apt/preferences.d/orchestrate-criu" <<'EOF'
Package: *
Pin: release n=sid
Pin-Priority: 100

Package: criu libcompel1
Pin: release n=sid
Pin-Priority: 990
EOF
  if [ -n "$proxy" ]; then
    echo "Acquire::http::Proxy \"$proxy\";" >"$root/etc/apt/apt.conf.d/90orchestrate-proxy"
  else
    rm -f "$root/etc/apt/apt.conf.d/90orchestrate-proxy"
  fi
  echo "deb $mirror trixie main" >"$root/etc/apt/sources.list"
  say "installing CRIU from Debian sid inside $root (apt resolves its dependencies)"
  chroot "$root" apt-get update -qq >"$CRIU_PREFIX/apt.log" 2>&1 ||
    die "apt-get update in $root failed: $(grep -E '^(E|W):' "$CRIU_PREFIX/apt.log" | tail -n2 | tr '\n' ' ')(log: $CRIU_PREFIX/apt.log)"
  # criu/sid: apt selects sid's criu and, for every dependency it needs at a
  # newer version than trixie has, sid's version too.
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends criu/sid >>"$CRIU_PREFIX/apt.log" 2>&1 ||
    die "apt-get install criu/sid in $root failed: $(grep -E '^(E|W):|Depends:' "$CRIU_PREFIX/apt.log" | tail -n3 | tr '\n' ' ')(log: $CRIU_PREFIX/apt.log)"
  chroot "$root" apt-get clean >/dev/null 2>&1 || true
  mkdir -p "$(dirname "$CRIU_WRAPPER")"
  cat >"$CRIU_WRAPPER.tmp" <<EOF
#!/bin/sh
# Installed by orchestrate's scripts/install-host.sh: CRIU from Debian sid,
# installed by apt in a private Debian 13 root ($root) and run with that
# root's loader and libraries, because the system's libc is too old for it.
exec $root/lib64/ld-linux-x86-64.so.2 --library-path $root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu $root/usr/sbin/criu "\$@"
EOF
  chmod 0755 "$CRIU_WRAPPER.tmp"
  mv "$CRIU_WRAPPER.tmp" "$CRIU_WRAPPER"
}

# distribution_criu: install Debian's own criu package when no CRIU is
# installed, and keep it only when it works on this kernel. True when it does.
distribution_criu() {
  [ "${ORCHESTRATE_SKIP_APT:-0}" != 1 ] || return 1
  if dpkg-query -W -f='${Status}' criu 2>/dev/null | grep -q 'install ok installed'; then
    return 1 # installed already, and it failed the checks above
  fi
  apt-cache show criu >/dev/null 2>&1 || apt-get update -qq || return 1
  apt-cache show criu >/dev/null 2>&1 || { say "the distribution has no criu package"; return 1; }
  # A package known not to work here is not installed just to be purged again
  # (on a fresh machine of this kind it goes straight to the private CRIU).
  local candidate
  candidate=$(apt-cache policy criu | awk '/Candidate:/{print $2}' | sed 's/^[0-9]*://; s/[-+~].*//')
  if [ -n "$candidate" ] && ! criu_fits_kernel "$candidate"; then
    say "the distribution's CRIU $candidate cannot work on kernel $(uname -r) (needs >= 4.2): not installing it"
    return 1
  fi
  say "trying the distribution's CRIU: apt-get install criu"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends criu >/dev/null ||
    { say "apt-get install criu failed"; return 1; }
  hash -r
  if criu_ok /usr/sbin/criu; then
    say "using the distribution's CRIU; no private CRIU needed"
    return 0
  fi
  say "the distribution's CRIU does not work here: removing it again"
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq criu >/dev/null || say "apt-get purge criu failed"
  hash -r
  return 1
}

ensure_criu() {
  if [ "${ORCHESTRATE_PRIVATE_CRIU:-0}" != 1 ]; then
    if criu_ok "$CRIU_WRAPPER"; then return; fi
    if [ "$(command -v criu || true)" != "$CRIU_WRAPPER" ] && criu_ok criu; then return; fi
    if distribution_criu; then return; fi
  elif criu_ok "$CRIU_WRAPPER"; then
    return
  fi
  say "installing CRIU >= 4.2 privately under $CRIU_PREFIX"
  install_private_criu
  criu_ok "$CRIU_WRAPPER" || die "the private CRIU at $CRIU_WRAPPER does not work: $(criu_diagnose "$CRIU_WRAPPER")"
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

if [ "${1:-}" = --print-apt ]; then
  echo "mirror=$(debian_mirror)"
  echo "proxy=$(apt_proxy)"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root: it installs packages and writes under /opt and /etc"
install_packages
ensure_criu
ensure_podman_conf
hash -r
say "done: podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), criu $("$(command -v criu || echo "$CRIU_WRAPPER")" --version | awk '/^Version:/{print $2}')"
