#!/usr/bin/env bash
# install-docker.sh installs Docker Engine (Debian 12's docker.io, 20.10.24)
# for orchestrate's Docker engine and its tests. Idempotent: it does nothing
# when dockerd and containerd are already present.
#
# It never starts a daemon and never enables a service: on these machines
# (no systemd) the tests start a private dockerd per simulated host, with
# --experimental (checkpoint and restore need it) and the CRIU that
# install-host.sh provides first on its PATH (/usr/local/sbin/criu).
#
# Environment:
#   ORCHESTRATE_SKIP_APT=1   do not install packages (they must be present)
set -euo pipefail

say() { printf 'install-docker: %s\n' "$*"; }
die() { printf 'install-docker: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

if command -v dockerd >/dev/null && command -v containerd >/dev/null && [ -x /usr/bin/docker ]; then
  say "docker.io present: $(dockerd --version)"
else
  [ "${ORCHESTRATE_SKIP_APT:-}" != 1 ] || die "dockerd missing and ORCHESTRATE_SKIP_APT=1"
  say "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  # The package's maintainer scripts try to start the service; there is no
  # init system to start it here, and the tests start their own daemons.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
  apt-get install -y -q --no-install-recommends docker.io >/dev/null || {
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends docker.io >/dev/null
  }
  say "installed: $(dockerd --version)"
fi
# Checkpoints need CRIU >= 4.2 here (HOSTS.md); install-host.sh provides it.
command -v criu >/dev/null || die "criu missing: run scripts/install-host.sh first"
