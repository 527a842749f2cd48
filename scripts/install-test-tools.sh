#!/usr/bin/env bash
# install-test-tools.sh installs what only the tests need (not edge hosts).
# Idempotent: each tool is checked first, and a second run installs nothing.
#
#   vagrant            so that `vagrant validate` checks vagrant/Vagrantfile
#   gdb                loads the core files `orchestrate inspect --core` writes
#   docker-registry    Docker's distribution registry, a real registry the
#                      checkpoint-image tests push to on loopback
#   chromium,          the console's browser test drives headless Chromium
#   chromium-driver    (/usr/bin/chromium) over the DevTools protocol; its
#   fonts-liberation,  screenshots need real fonts (Chromium only recommends
#   fonts-dejavu-core  them)
#   promtool           checks and unit-tests docs/prometheus-rules.yaml. Debian
#                      ships it only inside the prometheus server package, so
#                      the package is downloaded and only promtool is unpacked
#                      (under $TOOLS_PREFIX, linked into /usr/local/bin): no
#                      server is installed or started.
#
# Environment:
#   TOOLS_PREFIX   where unpacked tools go (default /opt/orchestrate/test-tools)
set -euo pipefail

TOOLS_PREFIX=${TOOLS_PREFIX:-/opt/orchestrate/test-tools}

say() { printf 'install-test-tools: %s\n' "$*"; }
die() { printf 'install-test-tools: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs Debian packages"

apt_updated=0
apt_install() {
  say "installing $* (Debian packages, no recommends)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    [ "$apt_updated" = 1 ] && die "apt-get install $* failed"
    apt-get update -qq
    apt_updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
      die "apt-get install $* failed"
  fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in vagrant gdb docker-registry chromium chromium-driver fonts-liberation fonts-dejavu-core; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  say "vagrant, gdb, docker-registry, chromium, chromium-driver, fonts present"
else
  apt_install "${missing[@]}"
fi
/usr/bin/chromium --version >/dev/null 2>&1 || die "/usr/bin/chromium does not run"

# promtool: unpacked from Debian's prometheus package, nothing else of it.
if "$TOOLS_PREFIX/bin/promtool" --version >/dev/null 2>&1; then
  say "promtool present"
else
  say "unpacking promtool from Debian's prometheus package"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
    [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }
    (cd "$work" && apt-get download -qq prometheus >/dev/null) || die "apt-get download prometheus failed"
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  install -D -m 0755 "$work/root/usr/bin/promtool" "$TOOLS_PREFIX/bin/promtool"
  "$TOOLS_PREFIX/bin/promtool" --version >/dev/null 2>&1 || die "the unpacked promtool does not run"
fi
ln -sf "$TOOLS_PREFIX/bin/promtool" /usr/local/bin/promtool
