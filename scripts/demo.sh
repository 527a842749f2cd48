#!/usr/bin/env bash
echo "make demo: not yet — the drain demo arrives with the migration issue (#5)."
echo "Today: 'make test' checkpoints and restores real workloads through Podman and CRIU."
