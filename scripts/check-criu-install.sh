#!/usr/bin/env bash
# check-criu-install.sh proves, on every `make test`, that the private CRIU
# install works from nothing: it runs scripts/install-host.sh with
# CRIU_PREFIX, CRIU_WRAPPER and the Podman settings pointed at a throwaway
# directory (so neither /opt/orchestrate nor /usr/local/sbin/criu nor any
# cache of an earlier run is used), runs `criu check` with the result, then
# checkpoints and restores the test workload on a simulated host with that
# CRIU and no other on PATH, and checks that the workload kept its memory and
# went on counting. Everything it made is removed at the end, also on failure
# or Ctrl-C.
#
# Needs the Debian packages (install-host.sh installs them) and the workload
# image (build-workload-image.sh). Budget: under 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SIM=$PWD/scripts/simhost.sh
start=$(date +%s)

say() { printf 'check-criu-install: %s\n' "$*"; }
die() { printf 'check-criu-install: FAILED: %s\n' "$*" >&2; exit 1; }

# Under /var/tmp, not /tmp: the root is hundreds of MB and /tmp may be small.
work=$(mktemp -d /var/tmp/orchestrate-criu-check.XXXXXX)
host=ck$$
host=${host:0:8}
cleanup() {
  "$SIM" down "$host" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "installing CRIU from scratch into $work"
ORCHESTRATE_SKIP_APT=1 ORCHESTRATE_PRIVATE_CRIU=1 CRIU_PREFIX="$work/criu" CRIU_WRAPPER="$work/bin/criu.real" \
  ORCHESTRATE_CONF_DIR="$work/etc" bash scripts/install-host.sh | sed 's/^/  /'
"$work/bin/criu.real" check >/dev/null 2>&1 || die "'criu check' fails with the fresh CRIU: $("$work/bin/criu.real" check 2>&1 | tail -n3)"
say "criu check: $("$work/bin/criu.real" check 2>&1 | grep -v 'kdat cache' | tail -n1), version $("$work/bin/criu.real" --version | awk '/^Version:/{print $2}')"

# A shim that records each call, so the test can see runc used this CRIU.
cat >"$work/bin/criu" <<EOF
#!/bin/sh
echo "\$*" >>"$work/criu-calls"
exec "$work/bin/criu.real" "\$@"
EOF
chmod 0755 "$work/bin/criu"
path="$work/bin:/usr/sbin:/usr/bin:/sbin:/bin"
found=$(env PATH="$path" sh -c 'command -v criu')
[ "$found" = "$work/bin/criu" ] || die "criu on the test PATH is $found, not the fresh one"

say "checkpoint and restore of the workload on simulated host $host"
ORCHESTRATE_CONF_DIR="$work/etc" "$SIM" up "$host" >"$work/up"
image=$(scripts/build-workload-image.sh)
"$SIM" exec "$host" podman load -q -i "$image" >/dev/null
pod() { "$SIM" exec "$host" env PATH="$path" podman "$@"; }
probe() { "$SIM" exec "$host" sh -c 'echo | busybox nc 127.0.0.1 8080'; }
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"]*\)\"\{0,1\}[,}].*/\1/p"; }
pod run -d --name ckwork --network host localhost/orchestrate-workload:latest -mib 16 -listen 127.0.0.1:8080 >/dev/null
for _ in $(seq 1 100); do probe >/dev/null 2>&1 && break; sleep 0.1; done
before=$(probe) || die "the workload does not answer"
pod container checkpoint --export "$work/ck.tar" ckwork >/dev/null || die "checkpoint failed: $(tail -n5 "$work/criu-calls" 2>/dev/null)"
pod rm -f ckwork >/dev/null
pod container restore --import "$work/ck.tar" >/dev/null || die "restore failed"
for _ in $(seq 1 100); do probe >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.3
after=$(probe) || die "the restored workload does not answer"
[ "$(echo "$before" | field checksum)" = "$(echo "$after" | field checksum)" ] || die "memory changed: $before / $after"
[ "$(echo "$before" | field start)" = "$(echo "$after" | field start)" ] || die "not the same process: $before / $after"
[ "$(echo "$after" | field counter)" -gt "$(echo "$before" | field counter)" ] || die "the counter did not go on: $before / $after"
calls=$(grep -c . "$work/criu-calls" || true)
[ "$calls" -ge 2 ] || die "runc did not call the fresh CRIU for both steps (calls: $(tr '\n' ';' <"$work/criu-calls"))"
pod rm -f ckwork >/dev/null 2>&1 || true
say "ok in $(( $(date +%s) - start )) s: the workload kept its memory (checksum $(echo "$after" | field checksum)) and counted on ($(echo "$before" | field counter) -> $(echo "$after" | field counter)); runc called the fresh CRIU $calls times"
