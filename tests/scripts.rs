//! The test scripts' shell library (scripts/lib.sh), where a mistake stops CI rather than a
//! test: these run it as the scripts do.

use std::process::Command;

/// A daemon started from inside a `$(...)` must not hold that substitution's pipe: test-env.sh
/// runs as `$(scripts/test-env.sh)` with its stdout on fd 3, and a dockerd that inherited fd 3
/// kept scripts/test.sh waiting until the CI run timed out.
#[test]
fn spawn_daemon_leaves_the_command_substitution_free() {
    let script = r#"
        . scripts/lib.sh
        out=$(exec 3>&1 1>&2; spawn_daemon /dev/null sleep 60; echo "$!" >&3)
        kill "$out"
        echo "daemon $out"
    "#;
    // `timeout` turns the hang into exit status 124 instead of a test that never ends.
    let output = Command::new("timeout")
        .args(["20", "bash", "-euc", script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "status {:?} (124: the substitution waited for the daemon)\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("daemon "));
}
