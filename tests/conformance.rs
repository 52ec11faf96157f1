//! Differential conformance: every case in testdata/conformance is built by rbuild (docker
//! archive -> `docker load`) and by `DOCKER_BUILDKIT=1 docker build`, and the two images must
//! have the same filesystem and config. A case directory holds:
//! - `Dockerfile` and its context files;
//! - `build-args` (optional): one `KEY=VALUE` per line; `target` (optional): the stage;
//! - `assert.sh` (optional): run with `sh -e` inside rbuild's image (every command must
//!   succeed, not only the last);
//! - `rbuild-only` (optional): why docker 20.10's frontend cannot build it (no comparison then);
//! - `error` (optional): the build must fail and rbuild's stderr must contain this text.
//!
//! Base images are written `localhost:5000/NAME` in the cases' Dockerfiles: a placeholder for
//! the run's registry (`RBUILD_TEST_REGISTRY`, a free port per run, see scripts/test.sh).
//! Each case's Dockerfile is copied with the placeholder replaced into a temporary directory
//! and given with `-f` to both builders, the context staying the case directory, so docker
//! and rbuild build the very same text (a build-arg in `FROM` would put an `ARG` before it
//! in every case and change what some cases test). A `Dockerfile.dockerignore` is copied
//! beside it, where both builders look for it.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use support::*;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/conformance")
}

/// One store for the whole run, as a CI job would use: concurrent builds share it. The
/// rootless pass's user has one of its own.
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| kept_store("conformance-store"))
}

fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn build_args(case: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for line in read_opt(&case.join("build-args"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        args.push("--build-arg".to_string());
        args.push(line.trim().to_string());
    }
    if let Some(target) = read_opt(&case.join("target")) {
        args.push("--target".to_string());
        args.push(target.trim().to_string());
    }
    args
}

/// The registry the cases' Dockerfiles name, replaced by the run's.
const PLACEHOLDER: &str = "localhost:5000";

/// The case's Dockerfile for this run (see the header), written into `dir`; returns its path.
fn dockerfile_for_run(case: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(case.join("Dockerfile"))
        .unwrap_or_else(|e| panic!("{}: {e}", case.join("Dockerfile").display()));
    let path = dir.join("Dockerfile");
    std::fs::write(&path, text.replace(PLACEHOLDER, registry())).unwrap();
    let ignore = case.join("Dockerfile.dockerignore");
    if ignore.exists() {
        std::fs::copy(&ignore, dir.join("Dockerfile.dockerignore")).unwrap();
    }
    path
}

fn check_case(name: &str) {
    needs_root_docker_and_registry();
    let case = cases_dir().join(name);
    assert!(
        case.join("Dockerfile").is_file(),
        "{}: no Dockerfile",
        case.display()
    );
    let out_dir = tempdir();
    let archive = out_dir.path().join("image.tar");
    let dockerfile_dir = tempdir();
    let dockerfile = dockerfile_for_run(&case, dockerfile_dir.path());
    let rbuild_tag = format!("rbuild-conformance/{name}:rbuild");
    let docker_tag = format!("rbuild-conformance/{name}:docker");
    let _images = DockerImages(vec![rbuild_tag.clone(), docker_tag.clone()]);
    let expected_error = read_opt(&case.join("error"));
    let rbuild_only = case.join("rbuild-only").exists();

    let out = run(rbuild(store())
        .arg("-f")
        .arg(&dockerfile)
        .args(["-t", &rbuild_tag])
        .arg("-o")
        .arg(format!("type=docker,dest={}", archive.display()))
        .args(build_args(&case))
        .arg(&case));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(expected) = &expected_error {
        assert!(
            !out.status.success(),
            "{name}: rbuild should have failed; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(expected.trim()),
            "{name}: error should contain {expected:?}; stderr:\n{stderr}"
        );
        assert!(
            !archive.exists(),
            "{name}: a failed build left an output file"
        );
        if !rbuild_only {
            let docker_out = run(docker()
                .env("DOCKER_BUILDKIT", "1")
                .args(["build", "--network=host", "-q", "-f"])
                .arg(&dockerfile)
                .args(build_args(&case))
                .arg(&case));
            assert!(
                !docker_out.status.success(),
                "{name}: docker build succeeded where rbuild must fail"
            );
        }
        return;
    }
    assert!(out.status.success(), "{name}: rbuild failed:\n{stderr}");
    run_ok(docker().arg("load").arg("-i").arg(&archive));

    if case.join("assert.sh").exists() {
        run_ok(
            docker()
                .args(["run", "--rm", "--network=none", "-v"])
                .arg(format!(
                    "{}:/rbuild-assert.sh:ro",
                    case.join("assert.sh").display()
                ))
                .args([
                    "--entrypoint",
                    "/bin/sh",
                    &rbuild_tag,
                    "-e",
                    "/rbuild-assert.sh",
                ]),
        );
    }
    if rbuild_only {
        return;
    }
    run_ok(
        docker()
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network=host", "-q", "-t", &docker_tag, "-f"])
            .arg(&dockerfile)
            .args(build_args(&case))
            .arg(&case),
    );

    let diffs = diff_listings(&docker_fs(&docker_tag), &docker_fs(&rbuild_tag));
    assert!(
        diffs.is_empty(),
        "{name}: filesystems differ:\n{}",
        diffs.join("\n")
    );
    let (want, got) = (docker_config(&docker_tag), docker_config(&rbuild_tag));
    assert_eq!(
        got, want,
        "{name}: configs differ (left rbuild, right docker)"
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod case {
            $(
                #[test]
                #[ignore = "needs root, docker and a registry"]
                fn $name() {
                    super::check_case(stringify!($name));
                }
            )*
        }
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

cases! {
    add_checksum,
    add_gzip_archive,
    add_local_archive,
    add_xz_bzip2_archives,
    arg_default_from_other_arg,
    arg_scoping,
    big_file,
    build_args,
    cmd_shell_form,
    comments_and_continuations,
    config_fields,
    copy_chmod_new_parents,
    copy_chown_chmod,
    copy_chown_new_parents,
    copy_dir_contents,
    copy_dir_into_dest_symlinks,
    copy_exclude,
    copy_from_image,
    copy_from_stage_ownership,
    copy_link,
    copy_parents,
    copy_rename_and_dest_rules,
    copy_symlinks,
    copy_through_dest_symlink,
    copy_wildcard,
    dockerignore,
    duplicate_stage_names,
    duplicate_stage_names_target,
    env_expansion,
    env_in_run_and_history,
    env_legacy_form,
    env_override,
    error_copy_dir_through_dest_symlink,
    error_copy_ignored,
    error_copy_missing,
    error_no_from,
    error_unknown_instruction,
    error_unknown_stage,
    escape_directive,
    expansion_patterns,
    from_scratch_config,
    fifo_and_devices,
    hardlinks,
    healthcheck_none,
    heredoc_copy,
    heredoc_copy_escapes,
    heredoc_run,
    maintainer,
    modify_lower_file,
    multistage_chain,
    multistage_copy_from,
    multistage_index,
    onbuild_recorded,
    opaque_dir,
    proxy_build_args,
    run_basic,
    run_empty_layer,
    run_exec_form,
    run_fail,
    run_mount_bind,
    run_mount_cache,
    run_mount_cache_settings,
    run_mount_expanded,
    run_network_none,
    sandbox_hostname,
    shell_instruction,
    special_bits,
    symlinks,
    target_stage,
    targetstage_arg,
    unicode_and_long_names,
    user_default_groups,
    user_names,
    user_with_supplementary_groups,
    whiteout_delete,
    workdir_create,
    workdir_env,
    workdir_user_owned,
}

#[test]
fn every_case_directory_is_listed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "testdata/conformance and the cases! list must agree"
    );
}
