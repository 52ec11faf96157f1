#!/usr/bin/env bash
# The end-to-end tests again with rbuild run rootless (docs/rootless.md "Tests"): the test
# binaries stay root (they drive docker and the registry and check what rbuild made), and
# tests/support's rbuild command builders run rbuild as RBUILD_TEST_USER, an unprivileged
# user with a subordinate id range made here. scripts/test.sh runs this after the root
# pass, on the same registry; alone, as root:
#
#   eval "$(scripts/test-env.sh)" && scripts/test-rootless.sh [TEST_ARGS...]
#
# Tests that need root by nature are skipped by tests/rootless-skip.txt, which says why for
# each; the run prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "scripts/test-rootless.sh: run as root: it makes the user and runs the tests" >&2; exit 1; }
[[ -n ${RBUILD_TEST_REGISTRY:-} ]] || { echo "scripts/test-rootless.sh: RBUILD_TEST_REGISTRY is not set: run scripts/test.sh, or eval \"\$(scripts/test-env.sh)\" first" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# The end-to-end files: conformance cases against docker, builds, stages, outputs, examples.
FILES=(conformance build stages outputs examples)
export RBUILD_TEST_USER=${RBUILD_TEST_USER:-rbuild-e2e}
ensure_rootless_user "$RBUILD_TEST_USER"

as_user() { setpriv --reuid "$RBUILD_TEST_USER" --regid "$RBUILD_TEST_USER" --init-groups "$@"; }
# The user reads the cases' contexts (testdata/) from this checkout and keeps stores under
# cargo's target/tmp: a directory above them that it may not enter (a checkout in /root)
# gets an ACL entry letting this user alone pass through.
for top in "$PWD" "${CARGO_TARGET_DIR:-$PWD/target}"; do
  dir=
  IFS=/ read -ra parts <<<"${top#/}"
  for part in "${parts[@]}"; do   # from / down, so that only the closed ones get an entry
    dir+=/$part
    if [[ -d $dir ]] && ! as_user test -x "$dir"; then
      log "letting $RBUILD_TEST_USER pass through $dir (setfacl -m u:$RBUILD_TEST_USER:x)"
      setfacl -m "u:$RBUILD_TEST_USER:x" "$dir"
    fi
  done
done
if ! as_user test -r testdata/conformance -a -x testdata/conformance; then
  echo "scripts/test-rootless.sh: $RBUILD_TEST_USER cannot read $PWD/testdata: make the checkout's directories readable (chmod o+rx on them and their parents)" >&2
  exit 1
fi

skips=()
while read -r name reason; do
  [[ -z $name || $name == \#* ]] && continue
  log "rootless pass skips $name: $reason"
  skips+=(--skip "$name")
done <tests/rootless-skip.txt

args=("$@")
[[ " ${args[*]} " == *" --test-threads"* ]] || args=(--test-threads=2 "${args[@]}")
[[ " ${args[*]} " == *" --ignored "* || " ${args[*]} " == *" --include-ignored "* ]] ||
  args=(--include-ignored "${args[@]}")
log "rootless pass: tests/{$(IFS=,; echo "${FILES[*]}")}.rs with rbuild run as $RBUILD_TEST_USER"
cargo test --locked --no-fail-fast "${FILES[@]/#/--test=}" -- "${args[@]}" "${skips[@]}"
