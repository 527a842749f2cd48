# orchestrate: build, test and measure.
#
#   make build   bin/orchestrate (static, CGO_ENABLED=0)
#   make test    install what the tests need (idempotent), prove the private
#                CRIU install from scratch (check-install), then run every test:
#                unit, real Podman + CRIU, real SSH, multi-process clusters,
#                simulated multi-host e2e, a real reboot of a QEMU guest
#                (scripts/vm.sh: about 2.5 minutes; its image is built once
#                and cached in /var/cache/orchestrate/vm, a cold build adds
#                about 9 minutes on a quiet machine), and short fuzz runs
#   make e2e     only the simulated multi-host end-to-end tests
#   make bench   measurements, printed as tables (see docs/benchmarks.md); the
#                scale harness (internal/scale: 10, 50 and 100 agents on
#                loopback, 3 runs each, about 15 minutes) is part of it
#   make demo    three simulated hosts, a workload, a drain
#   make vm-test Debian 12 guests under QEMU (scripts/vm.sh): every VM test
#   make lint    gofmt and go vet
SHELL := /bin/bash
export PATH := /usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)
export CGO_ENABLED := 0
TAGS := remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp
export GOFLAGS := -tags=$(TAGS)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO_TEST_TIMEOUT ?= 25m
# package:FuzzTarget:budget triples run briefly by `make test`. Budgets are
# execution counts (about 8 s each here), not durations: Go 1.26's fuzz
# coordinator can report a spurious "context deadline exceeded" failure when a
# duration -fuzztime ends while a worker is mid-input (golang/go#75804, fixed
# in Go 1.27; seen in our CI on FuzzCheckName with no crasher written).
# FUZZTIME=30s (or 1000000x) overrides every budget for a longer run by hand.
FUZZTIME ?=
FUZZ := ./engine/podman:FuzzParseDumpStats:80000x ./transfer:FuzzReadHeader:150000x \
	./transfer:FuzzCheckName:150000x ./transfer:FuzzVerifyReader:100000x ./transfer:FuzzPageLink:100000x \
	./engine/archive:FuzzImage:5000x ./engine/archive:FuzzRead:10000x ./transfer/delta:FuzzDelta:10000x

PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: build test unit e2e bench demo lint setup fuzz clean-hosts install check-install vm-test

build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/orchestrate ./cmd/orchestrate
	@file bin/orchestrate 2>/dev/null | grep -q 'statically linked' || ldd bin/orchestrate 2>&1 | grep -q 'not a dynamic' || { echo "bin/orchestrate is not static"; exit 1; }

# setup installs Podman, Docker (docker.io), runc, CRIU >= 4.2 (privately when needed), OpenSSH,
# zstd and busybox, and builds the workload image. Idempotent and cached.
setup:
	bash scripts/install-host.sh
	bash scripts/install-docker.sh
	bash scripts/install-test-tools.sh
	bash scripts/build-workload-image.sh >/dev/null

clean-hosts:
	bash scripts/simhost.sh down-all

# check-install installs the private CRIU from scratch into a throwaway
# prefix and checkpoints and restores the workload with it: proof, on every
# `make test`, that the install works on a machine that has nothing yet;
# check-clean-install.sh runs install-host.sh itself in a fresh Debian 12
# root (packages, the CRIU choice, `criu check`).
check-install: setup
	bash scripts/check-criu-install.sh
	bash scripts/check-clean-install.sh

# Packages run one at a time (-p 1): the integration tests measure failover
# and detection times, which two cores shared with another package distort.
test: setup check-install clean-hosts
	@trap 'bash scripts/simhost.sh down-all; bash scripts/vm.sh down' EXIT; \
	bash scripts/vm.sh image >/dev/null && \
	ORCHESTRATE_REQUIRE_HOSTS=1 go test -p 1 -count=1 -timeout $(GO_TEST_TIMEOUT) ./... && \
	go test -count=1 -tags=$(TAGS),testhooks ./internal/pause/ ./internal/clock/ && \
	$(MAKE) --no-print-directory fuzz

fuzz:
	@for f in $(FUZZ); do \
		pkg=$${f%%:*}; rest=$${f#*:}; fn=$${rest%%:*}; budget=$${FUZZTIME:-$${rest##*:}}; \
		echo "fuzz $$fn in $$pkg for $$budget"; \
		go test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $$budget -fuzzminimizetime 2s $$pkg || exit 1; \
	done

unit:
	go test -count=1 -short ./...

e2e: setup clean-hosts
	@trap 'bash scripts/simhost.sh down-all' EXIT; \
	ORCHESTRATE_REQUIRE_HOSTS=1 go test -count=1 -timeout $(GO_TEST_TIMEOUT) -run 'E2E|CrossHost' -v ./...

bench: setup clean-hosts
	@trap 'bash scripts/simhost.sh down-all' EXIT; \
	set -o pipefail; ORCHESTRATE_BENCH=1 go test -p 1 -count=1 -timeout 80m -run 'Bench' -v ./engine/podman/ ./internal/e2e/ ./cluster/ ./policy/ ./internal/scale/ | grep -v '^=== RUN\|^--- \|^PASS\|^ok\|^        time='
	@echo "transfer throughput:"; bash scripts/bench-transfer.sh

demo: build setup clean-hosts
	@bash scripts/demo.sh

# vm-test boots Debian 12 guests under QEMU (scripts/vm.sh; the guest image is
# built once and cached) and runs every VM test: the agent started by systemd,
# Debian's CRIU through install-host.sh, the engine suites inside a guest,
# CRIU's own pre-copy measured against content pre-copy, a real reboot.
vm-test: setup
	bash scripts/vm.sh test

# install: the binary, the systemd unit, /etc/orchestrate with an example
# config (an existing config is never overwritten), shell completion.
install: build
	install -D -m 0755 bin/orchestrate $(DESTDIR)$(PREFIX)/bin/orchestrate
	install -D -m 0644 scripts/systemd/orchestrate.service $(DESTDIR)/etc/systemd/system/orchestrate.service
	install -d -m 0755 $(DESTDIR)/etc/orchestrate
	install -m 0644 docs/config.example.yaml $(DESTDIR)/etc/orchestrate/orchestrate.example.yaml
	@[ -e $(DESTDIR)/etc/orchestrate/orchestrate.yaml ] || install -m 0600 docs/config.example.yaml $(DESTDIR)/etc/orchestrate/orchestrate.yaml
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/orchestrate/README.md
	install -d $(DESTDIR)/usr/share/bash-completion/completions
	bin/orchestrate completion bash > $(DESTDIR)/usr/share/bash-completion/completions/orchestrate
	@echo "installed; next: orchestrate keygen /etc/orchestrate/cluster.key (once, then copy it to every host),"
	@echo "edit /etc/orchestrate/orchestrate.yaml, then: systemctl enable --now podman.socket orchestrate"

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	go vet -tags $(TAGS),testhooks ./...
	go mod tidy -diff
