#!/usr/bin/env bash
# install-test-tools.sh installs what only the tests need (not edge hosts):
# Vagrant, so that `vagrant validate` checks vagrant/Vagrantfile. Idempotent.
set -euo pipefail
if command -v vagrant >/dev/null 2>&1; then
  echo "install-test-tools: vagrant present"
  exit 0
fi
echo "install-test-tools: installing vagrant (Debian package, no recommends)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends vagrant >/dev/null ||
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends vagrant >/dev/null; }
