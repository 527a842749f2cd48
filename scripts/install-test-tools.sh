#!/usr/bin/env bash
# install-test-tools.sh installs what only the tests need (not edge hosts):
#   - Vagrant, so that `vagrant validate` checks vagrant/Vagrantfile;
#   - gdb, which loads the core files `orchestrate inspect --core` writes;
#   - docker-registry (Docker's distribution registry), a real registry the
#     checkpoint-image tests push to on loopback.
# Idempotent: installs only what is missing.
set -euo pipefail
missing=()
command -v vagrant >/dev/null 2>&1 || missing+=(vagrant)
command -v gdb >/dev/null 2>&1 || missing+=(gdb)
command -v docker-registry >/dev/null 2>&1 || [[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
if ((${#missing[@]} == 0)); then
  echo "install-test-tools: vagrant, gdb and docker-registry present"
  exit 0
fi
echo "install-test-tools: installing ${missing[*]} (Debian packages, no recommends)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
