#!/usr/bin/env bash
# rbuild's whole test suite: unit tests, privileged integration tests (namespaces, overlay
# mounts, a real registry) and end-to-end comparisons with `docker build`. Run as root.
#
#   scripts/test.sh [TEST_ARGS...]                  cargo test --all-targets -- TEST_ARGS
#   scripts/test.sh CARGO_ARGS... -- [TEST_ARGS...] cargo test CARGO_ARGS -- TEST_ARGS
#                                                   (e.g. `--test registry -- --nocapture`)
#
# The whole suite (no CARGO_ARGS) then runs the end-to-end files again with rbuild rootless,
# as an unprivileged user with a subordinate id range (scripts/test-rootless.sh, same
# TEST_ARGS, same registry).
#
# The run gets a registry of its own: docker-registry on a free 127.0.0.1 port, on a copy of
# the seeded storage scripts/test-env.sh keeps (busybox:latest, debian:bookworm). The tests
# find it in RBUILD_TEST_REGISTRY. At the end the run fails if the tests left anything in it
# (or docker images in its name), and the registry and its storage are removed, also when
# the tests fail or the run is interrupted.
#
# Tests that need root, docker or a registry are `#[ignore = "needs ..."]`, so that a plain
# `cargo test` lists what it did not run; this script runs them too (`--include-ignored`,
# unless TEST_ARGS say `--ignored` or `--include-ignored`), and there a missing
# prerequisite fails the test.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "scripts/test.sh: run as root (sudo): the tests mount overlays and make namespaces" >&2; exit 1; }
STATE=${RBUILD_TEST_STATE:-/var/lib/rbuild-test}
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

cargo_args=() test_args=()
if [[ " $* " == *" -- "* ]]; then
  while (($#)) && [[ $1 != -- ]]; do cargo_args+=("$1"); shift; done
  shift
fi
test_args=("$@")
rootless_pass=0
((${#cargo_args[@]})) || { cargo_args=(--all-targets); rootless_pass=1; }

env_lines=$(scripts/test-env.sh --no-dev-registry)   # sets RBUILD_TEST_SEED
eval "$env_lines"

# Runs killed without their traps (kill -9) leave a directory: stop its registry and remove it
# once the script that made it is gone (a directory without an owner yet may be a concurrent
# run's that is just starting: left alone for a minute).
for old in "$STATE"/run.*; do
  [[ -d $old ]] || continue
  owner=$(cat "$old/owner.pid" 2>/dev/null || true)
  [[ -n $owner || -n $(find "$old" -maxdepth 0 -mmin +1) ]] || continue
  if [[ -z $owner ]] || ! tr '\0' ' ' 2>/dev/null <"/proc/$owner/cmdline" | grep -q 'scripts/test.sh'; then
    registry_stop "$old"
    rm -rf "$old"
  fi
done

run=$(mktemp -d "$STATE/run.XXXXXX")
echo $$ >"$run/owner.pid"
teardown() {
  registry_stop "$run"
  rm -rf "$run"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$(date +%s%N)
cp -a "$RBUILD_TEST_SEED/storage" "$run/storage"
port=$(registry_start_free "$run" "$run/storage")
export RBUILD_TEST_REGISTRY=localhost:$port
log "registry for this run: $RBUILD_TEST_REGISTRY, storage $run/storage (copied and started in $((($(date +%s%N) - started) / 1000000)) ms)"

# What the tests may leave behind in docker: images named in the run's registry, and the
# names tests give the images they build (compared with what was there before the run).
docker_leftovers() {
  {
    $DOCKER images --format '{{.Repository}}:{{.Tag}}'
    $DOCKER ps -a --format 'container {{.ID}} ({{.Image}})'
  } | grep -E "^(container .* \()?(localhost|127\.0\.0\.1):$port/|^(container .* \()?rbuild-(conformance|test)/" |
    LC_ALL=C sort || true
}
docker_leftovers >"$run/docker-before"

export CARGO_TERM_COLOR=never
status=0
# Two threads unless told otherwise: the machine has two cores and each e2e case runs two
# builders.
[[ " ${test_args[*]} " == *" --test-threads"* ]] || test_args=(--test-threads=2 "${test_args[@]}")
[[ " ${test_args[*]} " == *" --ignored "* || " ${test_args[*]} " == *" --include-ignored "* ]] ||
  test_args=(--include-ignored "${test_args[@]}")
cargo test --locked "${cargo_args[@]}" -- "${test_args[@]}" || status=$?
if ((rootless_pass)); then
  scripts/test-rootless.sh "${test_args[@]}" || status=$?
fi

# Hygiene: every test removes what it pushes (tests/support RegistryImage) and the docker
# images it makes. Whatever remains is named here and fails the run.
registry_contents "$port" "$run/storage" >"$run/contents" ||
  { echo "scripts/test.sh: listing the run's registry failed" >&2; exit 1; }
left=$(LC_ALL=C comm -13 "$RBUILD_TEST_SEED/contents" "$run/contents")
gone=$(LC_ALL=C comm -23 "$RBUILD_TEST_SEED/contents" "$run/contents")
if [[ -n $left ]]; then
  echo "scripts/test.sh: the tests left these in the run's registry (a test must delete what it pushes, e.g. with tests/support's RegistryImage):" >&2
  sed 's/^/  /' <<<"$left" >&2
  status=1
fi
if [[ -n $gone ]]; then
  echo "scripts/test.sh: the tests removed seeded base images from the run's registry:" >&2
  sed 's/^/  /' <<<"$gone" >&2
  status=1
fi
# Names in the run's registry are this run's own; the test names could also come from another
# run sharing the docker engine (a developer's), so outside CI they only warn.
docker_left=$(LC_ALL=C comm -13 "$run/docker-before" <(docker_leftovers))
if [[ -n $docker_left ]]; then
  if [[ ${CI:-} == true ]] || grep -qE "(localhost|127\.0\.0\.1):$port/" <<<"$docker_left"; then
    echo "scripts/test.sh: docker images or containers made during the run remain (tests remove what they make):" >&2
    status=1
  else
    echo "scripts/test.sh: warning: docker images or containers made during the run remain (a test's, or another run's on this docker engine):" >&2
  fi
  sed 's/^/  /' <<<"$docker_left" >&2
fi
exit $status
