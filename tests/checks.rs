//! Build checks on the command line (issue 22): `rbuild check` and `--check`, their exit
//! codes, the JSON schema, warnings after a build, the `# check=` directive and the
//! `BUILDKIT_DOCKERFILE_CHECK` build arg. The rules themselves are pinned by the golden
//! corpus in testdata/checks (`cargo test --lib check::`). Every Dockerfile here starts
//! from scratch, so no registry is needed.

mod support;

use std::path::Path;
use std::process::Output;

use support::*;

/// A context under `dir` with `dockerfile` and the given other files.
fn context(dir: &Path, dockerfile: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    for (name, body) in files {
        std::fs::write(ctx.join(name), body).unwrap();
    }
    ctx
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check(dir: &Path, ctx: &Path, extra: &[&str]) -> Output {
    run(std::process::Command::new(rbuild_bin())
        .env("RBUILD_ROOT", dir.join("store"))
        .arg("check")
        .args(extra)
        .arg(ctx))
}

const CASING: &str = "FROM scratch as base\nCOPY a.txt /\n";

#[test]
#[ignore = "needs root"]
fn check_reports_warnings_and_exits_zero_unless_at_error_level() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), CASING, &[("a.txt", "a")]);
    let out = check(dir.path(), &ctx, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "warning: Dockerfile:1: FromAsCasing: 'as' and 'FROM' keywords' casing do not match\n   \
         1 | FROM scratch as base\n   = https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n\
         check complete: 1 warning found\n"
    );

    // error=true in the directive: the same warning, exit 1 with BuildKit's message.
    let ctx = context(
        dir.path(),
        &format!("# check=error=true\n{CASING}"),
        &[("a.txt", "a")],
    );
    let out = check(dir.path(), &ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("FromAsCasing"));
    assert_eq!(
        text(&out.stderr).lines().last().unwrap(),
        "error: Dockerfile: lint violation found for rules: FromAsCasing"
    );
    // `--check` on a build is the same command.
    let out = run(rbuild(&dir.path().join("store")).arg("--check").arg(&ctx));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("FromAsCasing"));

    // skip in the directive silences the rule; the error level then has nothing to fail.
    let ctx = context(
        dir.path(),
        &format!("# check=skip=FromAsCasing;error=true\n{CASING}"),
        &[("a.txt", "a")],
    );
    let out = check(dir.path(), &ctx, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "check complete: no warnings found\n");
}

#[test]
#[ignore = "needs root"]
fn the_build_arg_replaces_the_directive() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        &format!("# check=skip=all\n{CASING}MAINTAINER me\n"),
        &[("a.txt", "a")],
    );
    let out = check(dir.path(), &ctx, &[]);
    assert_eq!(text(&out.stdout), "check complete: no warnings found\n");
    let arg = |v: &str| format!("BUILDKIT_DOCKERFILE_CHECK={v}");
    let out = check(
        dir.path(),
        &ctx,
        &["--build-arg", &arg("skip=MaintainerDeprecated;error=true")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FromAsCasing"), "{stdout}");
    assert!(!stdout.contains("MaintainerDeprecated"), "{stdout}");

    // A bad value is a user error naming its origin, not a panic.
    let out = check(dir.path(), &ctx, &["--build-arg", &arg("skip")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().last().unwrap(),
        "error: build arg BUILDKIT_DOCKERFILE_CHECK: invalid check option `skip` \
         (expected skip=RULES|all, error=true|false or experimental=RULES|all)"
    );
    // So is a bad directive, for a build too, before anything is built.
    let ctx = context(dir.path(), &format!("# check=error=maybe\n{CASING}"), &[]);
    let out = run(rbuild(&dir.path().join("store")).arg(&ctx));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().last().unwrap(),
        "error: Dockerfile: `# check=` directive: invalid check option `error=maybe`: expected true or false"
    );
}

#[test]
#[ignore = "needs root"]
fn json_output_follows_the_documented_schema() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        "FROM scratch\nCOPY tmp/x.txt /\nCMD run it\n",
        &[(".dockerignore", "tmp\n")],
    );
    let out = check(dir.path(), &ctx, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["file"], "Dockerfile");
    assert_eq!(v["error"], serde_json::Value::Null);
    let warnings = v["warnings"].as_array().unwrap();
    let rules: Vec<&str> = warnings
        .iter()
        .map(|w| w["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["CopyIgnoredFile", "JSONArgsRecommended"]);
    assert_eq!(
        warnings[0],
        serde_json::json!({
            "file": "Dockerfile",
            "line": 2,
            "end_line": 2,
            "column": 1,
            "end_column": 16,
            "rule": "CopyIgnoredFile",
            "level": "warning",
            "message": "Attempting to Copy file \"tmp/x.txt\" that is excluded by .dockerignore",
            "description": "Attempting to Copy file that is excluded by .dockerignore",
            "url": "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/"
        })
    );
    // At error level every warning says so, and `error` carries BuildKit's message.
    let out = check(
        dir.path(),
        &ctx,
        &[
            "--format",
            "json",
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=error=true",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["warnings"][1]["level"], "error");
    assert_eq!(
        v["error"],
        "lint violation found for rules: CopyIgnoredFile, JSONArgsRecommended"
    );
}

#[test]
#[ignore = "needs root"]
fn builds_print_warnings_at_the_end_and_stop_first_at_error_level() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = "FROM scratch\nCOPY a.txt /\nCMD run it\n";
    let ctx = context(dir.path(), dockerfile, &[("a.txt", "a")]);
    let store = dir.path().join("store");
    let out = run(rbuild(&store).arg(&ctx));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "WARNING: Dockerfile:3: JSONArgsRecommended: JSON arguments recommended for CMD \
             to prevent unintended behavior related to OS signals\n   3 | CMD run it\n"
        ),
        "{stderr}"
    );
    // The tty renderer prints them too, above where its live region was.
    let out = run(std::process::Command::new(rbuild_bin())
        .env("RBUILD_ROOT", &store)
        .args(["--progress", "tty"])
        .arg(&ctx));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("WARNING: Dockerfile:3: JSONArgsRecommended: ")
            && stderr.contains("   3 | CMD run it\n"),
        "{stderr}"
    );
    // Skipped through the build arg, nothing is said.
    let out = run(rbuild(&store)
        .args(["--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=all"])
        .arg(&ctx));
    assert!(out.status.success());
    assert!(
        !text(&out.stderr).contains("WARNING"),
        "{}",
        text(&out.stderr)
    );
    // At error level the build stops before its first step.
    let ctx = context(
        dir.path(),
        &format!("# check=error=true\n{dockerfile}"),
        &[("a.txt", "a")],
    );
    let out = run(rbuild(&store).args(["--iidfile", "id"]).arg(&ctx));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("COPY a.txt"), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap(),
        "error: Dockerfile: lint violation found for rules: JSONArgsRecommended"
    );
}

#[test]
#[ignore = "needs root"]
fn secret_files_are_found_in_what_a_directory_copy_brings() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        dir.path(),
        "FROM scratch\nCOPY . /app\n",
        &[
            (".dockerignore", "keys\n"),
            (".npmrc", "registry=https://registry.npmjs.org/\n"),
            ("app.js", ""),
        ],
    );
    std::fs::create_dir(ctx.join("keys")).unwrap();
    std::fs::write(ctx.join("keys/id_rsa"), "key").unwrap();
    // Ignored keys and a token-less .npmrc: nothing to say.
    let out = check(dir.path(), &ctx, &[]);
    assert_eq!(text(&out.stdout), "check complete: no warnings found\n");
    // A token in .npmrc and a key that .dockerignore lets through.
    std::fs::write(
        ctx.join(".npmrc"),
        "//registry.npmjs.org/:_authToken=npm_x\n",
    )
    .unwrap();
    std::fs::create_dir(ctx.join("deploy")).unwrap();
    std::fs::write(ctx.join("deploy/server.pem"), "key").unwrap();
    let out = check(dir.path(), &ctx, &[]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(
            "warning: Dockerfile:2: SecretFileCopied: \".\" copies \".npmrc\", which looks like \
             a credentials file and 1 more: "
        ),
        "{stdout}"
    );
}

#[test]
#[ignore = "needs root"]
fn json_says_why_when_the_dockerfile_does_not_parse() {
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), "FROM scratch\nRUNN true\n", &[]);
    let out = check(dir.path(), &ctx, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]));
    assert_eq!(
        v["error"],
        "Dockerfile:2: unknown instruction `RUNN` (did you mean `RUN`?)"
    );
    // The text form is the build's own error.
    let out = check(dir.path(), &ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: Dockerfile:2: unknown instruction `RUNN` (did you mean `RUN`?)\n   2 | RUNN true\n"
    );
}
