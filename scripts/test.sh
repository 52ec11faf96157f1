#!/usr/bin/env bash
# rbuild's whole test suite: unit tests, privileged integration tests (namespaces, overlay
# mounts, a real registry) and end-to-end comparisons with `docker build`. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "scripts/test.sh: run as root (sudo): the tests mount overlays and make namespaces" >&2; exit 1; }
scripts/test-env.sh
export CARGO_TERM_COLOR=never
# Two threads: the machine has two cores and each e2e case runs two builders.
cargo test --locked --all-targets -- --test-threads=2 "$@"
