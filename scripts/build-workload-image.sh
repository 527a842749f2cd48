#!/usr/bin/env bash
# build-workload-image.sh builds orchestrate's test workload into a container
# image without a registry: a static Go binary plus busybox-static in a rootfs,
# `podman import`ed into a throwaway store, then `podman save`d to an archive.
# Every simulated host `podman load`s that one archive, so all hosts hold the
# same image ID (separate imports would give different IDs).
#
# Output: $OUT (default /var/cache/orchestrate/workload-image.tar, or
# workload-image-$OSIM_TAG.tar for a tagged set of simulated hosts, so that
# two checkouts testing at once do not overwrite each other's image), rebuilt
# only when the workload binary changed. Prints the archive's path.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/var/cache/orchestrate/workload-image${OSIM_TAG:+-$OSIM_TAG}.tar}
IMAGE=${IMAGE:-localhost/orchestrate-workload:latest}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin:$PATH

mkdir -p "$(dirname "$OUT")" bin
# The same binary whoever calls (make exports build tags, tests do not), so
# the image is rebuilt, and its ID changes, only when the source changed.
CGO_ENABLED=0 GOFLAGS= go build -trimpath -ldflags='-s -w' -o bin/workload.$$ ./cmd/workload
mv bin/workload.$$ bin/workload
sum=$( (sha256sum bin/workload /bin/busybox; echo "$IMAGE") | sha256sum | cut -c1-16)
if [ -f "$OUT" ] && [ "$(cat "$OUT.key" 2>/dev/null)" = "$sum" ]; then
  echo "$OUT"
  exit 0
fi

work=$(mktemp -d)
trap 'umount -R "$work/run" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/etc" "$work/rootfs/data"
cp bin/workload "$work/rootfs/bin/workload"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in sh ls cat echo sleep wget ps; do ln -sf busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/:/bin/sh' >"$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .

cat >"$work/storage.conf" <<EOC
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
EOC
export CONTAINERS_STORAGE_CONF=$work/storage.conf
export CONTAINERS_CONF=${ORCHESTRATE_CONF_DIR:-/etc/orchestrate}/containers.conf
podman import --change 'ENTRYPOINT ["/bin/workload"]' --change 'CMD []' "$work/rootfs.tar" "$IMAGE" >/dev/null
rm -f "$OUT.tmp"
podman save --format docker-archive -o "$OUT.tmp" "$IMAGE" >/dev/null
podman rmi -af >/dev/null 2>&1 || true
mv "$OUT.tmp" "$OUT"
echo "$sum" >"$OUT.key"
echo "$OUT"
