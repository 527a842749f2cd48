#!/usr/bin/env bash
# bench-transfer.sh: throughput of orchestrate's transfer package over
# loopback SSH (streams with no compression, zstd 1 and 3, adaptive; SFTP
# upload; a page channel inside SSH and on its page link, with the CPU a
# GiB costs), against plain `scp` of the same payload to a temporary OpenSSH
# sshd started by this script. Three runs of each; prints min and median MB/s
# (MB = 10^6 bytes, as `go test -bench` reports).
#
# Env: MIB (payload size, default 256), RUNS (default 3).
# Needs: go, sshd/scp/ssh-keygen (openssh-server, openssh-client). Root, for
# sshd. Leaves nothing running.
set -euo pipefail

MIB=${MIB:-256}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH=$PATH:/usr/local/go/bin

tmp=$(mktemp -d /tmp/bench-transfer.XXXXXX)
sshd_pid=
cleanup() {
	if [[ -n $sshd_pid ]]; then
		kill "$sshd_pid" 2>/dev/null || true
		wait "$sshd_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

payload=$tmp/payload.bin
bench_out=$tmp/bench.txt

echo "== go benchmarks: ${MIB} MiB payload (4 KiB pages, half random, half zero), ${RUNS} runs" >&2
(cd "$ROOT" && TRANSFER_BENCH_FILE=$payload TRANSFER_BENCH_MIB=$MIB \
	go test -run '^$' -bench '^Benchmark(Stream|Upload)' -benchtime 1x -count "$RUNS" ./transfer/ &&
	go test -run '^$' -bench '^BenchmarkPageChannel' -benchtime 8x -count "$RUNS" ./transfer/) | tee "$bench_out" >&2

# ---- scp to a temporary sshd on a free loopback port ----
for tool in sshd scp ssh-keygen; do
	command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || { echo "missing $tool (apt-get install -y openssh-server openssh-client)" >&2; exit 1; }
done
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
ssh-keygen -q -t ed25519 -N '' -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/id"
cp "$tmp/id.pub" "$tmp/authorized_keys"
mkdir -p "$tmp/dst" /run/sshd

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=
for _ in $(seq 1 20); do
	p=$((20000 + RANDOM % 40000))
	port_open "$p" && continue
	cat >"$tmp/sshd_config" <<CONF
Port $p
ListenAddress 127.0.0.1
HostKey $tmp/host_key
PidFile none
AuthorizedKeysFile $tmp/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel ERROR
Subsystem sftp internal-sftp
CONF
	"$SSHD" -D -e -f "$tmp/sshd_config" 2>"$tmp/sshd.log" &
	sshd_pid=$!
	for _ in $(seq 1 100); do
		if port_open "$p"; then port=$p; break; fi
		kill -0 "$sshd_pid" 2>/dev/null || break
		sleep 0.05
	done
	[[ -n $port ]] && break
	kill "$sshd_pid" 2>/dev/null || true
	wait "$sshd_pid" 2>/dev/null || true
	sshd_pid=
done
[[ -n $port ]] || { echo "could not start sshd: $(cat "$tmp/sshd.log")" >&2; exit 1; }
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$tmp/host_key.pub")" >"$tmp/known_hosts"

size=$(stat -c %s "$payload")
: >"$tmp/scp.txt"
for i in $(seq 1 "$RUNS"); do
	rm -f "$tmp/dst/payload.bin"
	t0=$(date +%s.%N)
	scp -q -i "$tmp/id" -P "$port" -o BatchMode=yes -o UserKnownHostsFile="$tmp/known_hosts" \
		-o StrictHostKeyChecking=yes "$payload" "root@127.0.0.1:$tmp/dst/payload.bin"
	t1=$(date +%s.%N)
	cmp -s "$payload" "$tmp/dst/payload.bin" || { echo "scp copy differs" >&2; exit 1; }
	awk -v s="$size" -v a="$t0" -v b="$t1" 'BEGIN { printf "scp %.2f\n", s / 1e6 / (b - a) }' >>"$tmp/scp.txt"
done
echo "== scp: $(tr '\n' ' ' <"$tmp/scp.txt")" >&2

# ---- table ----
{
	awk '/^Benchmark.*MB\/s/ {
		name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
		for (i = 1; i <= NF; i++) {
			if ($(i) == "MB/s") mbs = $(i-1)
			if ($(i) == "wire/raw") wr = $(i-1)
			if ($(i) == "cpu-s/GiB") cpu = $(i-1)
		}
		print name, mbs, (wr == "" ? "-" : wr), (cpu == "" ? "-" : cpu); wr = ""; cpu = ""
	}' "$bench_out"
	awk '{ print $1, $2, "1.000", "-" }' "$tmp/scp.txt"
} | sort -k1,1 -k2,2n | awk -v runs="$RUNS" -v mib="$MIB" '
	{ n[$1]++; v[$1, n[$1]] = $2; wr[$1] = $3; if ($4 != "-") { nc[$1]++; cpu[$1, nc[$1]] = $4 } if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
	END {
		printf "\ntransfer over loopback SSH, %d MiB payload, %d runs (MB/s = 10^6 B/s of uncompressed data;\n", mib, runs
		printf "page channels: 8 x 64 MiB a run, both ends in one process, cpu-s/GiB the CPU they use together, median)\n"
		printf "%-20s %10s %10s %10s %10s\n", "method", "min MB/s", "median", "wire/raw", "cpu-s/GiB"
		for (j = 1; j <= k; j++) {
			m = order[j]; c = n[m]
			med = (c % 2) ? v[m, (c + 1) / 2] : (v[m, c / 2] + v[m, c / 2 + 1]) / 2
			cm = "-"
			if (nc[m] > 0) {
				# median of the CPU figures (insertion sort; a handful)
				for (a = 2; a <= nc[m]; a++) for (b = a; b > 1 && cpu[m, b-1] + 0 > cpu[m, b] + 0; b--) { t = cpu[m, b]; cpu[m, b] = cpu[m, b-1]; cpu[m, b-1] = t }
				cm = (nc[m] % 2) ? cpu[m, (nc[m] + 1) / 2] : sprintf("%.3f", (cpu[m, nc[m] / 2] + cpu[m, nc[m] / 2 + 1]) / 2)
			}
			printf "%-20s %10.1f %10.1f %10s %10s\n", m, v[m, 1], med, wr[m], cm
		}
	}'
