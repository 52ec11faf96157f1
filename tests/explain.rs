//! Why a step missed the cache (issue 19): each cause, built twice with one input changed,
//! with the exact reason line plain progress prints (docs/explain.md).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// A build context and a store of its own.
struct Case {
    _dir: tempfile::TempDir,
    ctx: PathBuf,
    store: PathBuf,
}

impl Case {
    fn new(dockerfile: &str) -> Case {
        needs_root_and_registry();
        let dir = tempfile::Builder::new()
            .prefix("explain-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        let case = Case {
            ctx,
            store: dir.path().join("store"),
            _dir: dir,
        };
        case.dockerfile(dockerfile);
        case
    }

    fn dockerfile(&self, text: &str) {
        self.write("Dockerfile", text);
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.ctx.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = rbuild(&self.store);
        cmd.args(["-t", "rbuild-test/explain:1"])
            .args(args)
            .arg(&self.ctx);
        cmd
    }

    /// Build; the `#N cache miss: ...` lines it printed.
    fn misses(&self, args: &[&str]) -> Vec<String> {
        let out = run(&mut self.cmd(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "build failed:\n{stderr}");
        stderr
            .lines()
            .filter(|l| l.contains(" cache miss: "))
            .map(str::to_string)
            .collect()
    }
}

fn busybox(rest: &str) -> String {
    format!("FROM {REGISTRY}/busybox:latest\n{rest}")
}

/// `sha256:` and the first 12 hex digits of the file's sha256, as reasons show digests.
fn short(path: &Path) -> String {
    format!("sha256:{}", &sha256_file(path)[..12])
}

#[test]
#[ignore = "needs root and a registry"]
fn a_first_build_has_no_earlier_build() {
    let c = Case::new(&busybox("RUN echo a\nRUN echo b\n"));
    // Plain progress: the stage's first miss only.
    assert_eq!(
        c.misses(&[]),
        ["#2 cache miss: no earlier build of this step"]
    );
    assert!(
        c.misses(&[]).is_empty(),
        "a cached rebuild explains nothing"
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn a_changed_context_file_is_named_with_both_digests() {
    let c = Case::new(&busybox("COPY src /src\nRUN cat /src/app.py\n"));
    c.write("src/app.py", "print(1)\n");
    c.write("src/lib.py", "x = 1\n");
    let old = short(&c.ctx.join("src/app.py"));
    c.misses(&[]);
    c.write("src/app.py", "print(2)\n");
    let new = short(&c.ctx.join("src/app.py"));
    assert_eq!(
        c.misses(&[]),
        [format!(
            "#2 cache miss: context file src/app.py changed ({old} -> {new})"
        )]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn several_changed_files_are_counted_and_the_first_named() {
    let c = Case::new(&busybox("COPY . /app\n"));
    for f in ["a", "b", "c", "d"] {
        c.write(f, "1");
    }
    c.misses(&[]);
    for f in ["a", "b", "d"] {
        c.write(f, "2");
    }
    c.write("e", "new");
    std::fs::remove_file(c.ctx.join("c")).unwrap();
    assert_eq!(
        c.misses(&[]),
        ["#2 cache miss: 5 context files changed: a, b, c (removed), ..."]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn a_changed_build_arg_is_named_with_both_values() {
    let c = Case::new(&busybox("ARG VERSION=1.0\nRUN echo $VERSION\n"));
    c.misses(&["--build-arg", "VERSION=1.2"]);
    assert_eq!(
        c.misses(&["--build-arg", "VERSION=1.3"]),
        ["#2 cache miss: --build-arg VERSION changed (1.2 -> 1.3)"]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn a_changed_instruction_is_shown_as_written() {
    let c = Case::new(&busybox("RUN echo make\n"));
    c.misses(&[]);
    c.dockerfile(&busybox("RUN echo make -j4\n"));
    assert_eq!(
        c.misses(&[]),
        ["#2 cache miss: instruction changed: RUN echo make -> RUN echo make -j4"]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn an_env_change_names_the_line_that_set_it() {
    let c = Case::new(&busybox("ENV PATH=/bin:/a\nRUN echo hi\n"));
    c.misses(&[]);
    c.dockerfile(&busybox("ENV PATH=/bin:/b\nRUN echo hi\n"));
    assert_eq!(
        c.misses(&[]),
        ["#2 cache miss: ENV PATH changed by line 2 (/bin:/a -> /bin:/b)"]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn a_changed_network_mode_is_named() {
    let c = Case::new(&busybox("RUN echo hi\n"));
    c.misses(&[]);
    assert_eq!(
        c.misses(&["--network", "none"]),
        ["#2 cache miss: --network changed (default -> none)"]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn later_steps_name_the_rebuilt_step_with_explain_only() {
    let c = Case::new(&busybox("ARG V=1\nRUN echo $V\nRUN echo b\nRUN echo c\n"));
    c.misses(&[]);
    assert_eq!(
        c.misses(&["--build-arg", "V=2"]),
        ["#2 cache miss: --build-arg V changed (1 -> 2)"],
        "plain progress names the stage's first miss only"
    );
    // The build args in scope are part of every later step's key too.
    c.dockerfile(&busybox("RUN echo a2\nRUN echo b\nRUN echo c\n"));
    c.misses(&[]);
    c.dockerfile(&busybox("RUN echo a3\nRUN echo b\nRUN echo c\n"));
    assert_eq!(
        c.misses(&["--explain"]),
        [
            "#2 cache miss: instruction changed: RUN echo a2 -> RUN echo a3",
            "#3 cache miss: previous step #2 was rebuilt",
            "#4 cache miss: previous step #3 was rebuilt",
        ]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn no_cache_is_the_reason_under_no_cache() {
    let c = Case::new(&busybox("RUN echo hi\n"));
    c.misses(&[]);
    assert_eq!(c.misses(&["--no-cache"]), ["#2 cache miss: --no-cache"]);
}

#[test]
#[ignore = "needs root and a registry"]
fn a_base_tag_that_moved_names_both_digests() {
    let c = Case::new("");
    let repo = format!(
        "{REGISTRY}/rbuild-test/explain-base-{}:1",
        std::process::id()
    );
    let publish = |content: &str| {
        let dir = c.ctx.parent().unwrap().join("base");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            busybox(&format!("RUN echo {content} > /b\n")),
        )
        .unwrap();
        let publisher = c.ctx.parent().unwrap().join("publisher");
        run_ok(rbuild(&publisher).args(["-t", &repo, "--push"]).arg(&dir));
        RegistryImage::pushed(&repo)
    };
    let short = |image: &RegistryImage| image.digest()[..19].to_string();
    let first = publish("1");
    let old = short(&first);
    c.dockerfile(&format!("FROM {repo}\nRUN echo hi\n"));
    c.misses(&[]);
    drop(first);
    let second = publish("2");
    let new = short(&second);
    assert_eq!(
        c.misses(&["--pull"]),
        [format!(
            "#2 cache miss: base image {repo} now resolves to {new} (was {old})"
        )]
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn metadata_file_lists_every_step_cached_or_why_not() {
    let c = Case::new(&busybox("RUN echo a\nRUN echo b\n"));
    c.misses(&[]);
    c.dockerfile(&busybox("RUN echo a\nRUN echo b2\n"));
    let meta = c.ctx.parent().unwrap().join("meta.json");
    c.misses(&["--metadata-file", meta.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        v["rbuild.steps"],
        serde_json::json!([
            { "step": 2, "instruction": "RUN echo a", "cached": true, "reason": null },
            { "step": 3, "instruction": "RUN echo b2", "cached": false,
              "reason": "instruction changed: RUN echo b -> RUN echo b2" },
        ])
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn a_step_after_a_changed_config_step_gives_that_steps_reason() {
    let c = Case::new(&busybox("LABEL a=1\nRUN echo hi\n"));
    c.misses(&[]);
    c.dockerfile(&busybox("LABEL a=2\nRUN echo hi\n"));
    assert_eq!(
        c.misses(&[]),
        ["#2 cache miss: instruction changed: LABEL a=1 -> LABEL a=2"]
    );
}
