//! Named build contexts (`--build-context NAME=DIR|docker-image://REF|oci-layout://DIR[:TAG]`).

mod support;

use std::fs;

use support::*;

#[test]
#[ignore = "needs root, docker and a registry"]
fn oci_layout_and_docker_image_contexts_serve_from_and_copy_from() {
    needs_root_docker_and_registry();
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    // An image written as an OCI layout directory is the base of a second build.
    let first = t.path().join("first");
    fs::create_dir(&first).unwrap();
    fs::write(
        first.join("Dockerfile"),
        format!("FROM {REGISTRY}/busybox\nRUN echo from-layout > /marker\n"),
    )
    .unwrap();
    let layout = t.path().join("layout");
    run_ok(
        rbuild(&store)
            .args(["-t", "ctx-first:v1", "-o"])
            .arg(format!("type=oci,dest={},tar=false", layout.display()))
            .arg(&first),
    );

    let second = t.path().join("second");
    fs::create_dir(&second).unwrap();
    fs::write(
        second.join("Dockerfile"),
        "FROM base\nRUN cat /marker > /seen\nCOPY --from=base /marker /copied\nCOPY --from=img /bin/busybox /bb\nCOPY --from=dir hello.txt /hello.txt\n",
    )
    .unwrap();
    let dir_ctx = t.path().join("dirctx");
    fs::create_dir(&dir_ctx).unwrap();
    fs::write(dir_ctx.join("hello.txt"), "hello\n").unwrap();
    let rootfs = t.path().join("rootfs");
    // A second, empty store: the layout is the only place the base can come from.
    run_ok(
        rbuild(&t.path().join("store2"))
            .arg(format!(
                "--build-context=base=oci-layout://{}:v1",
                layout.display()
            ))
            .arg(format!(
                "--build-context=img=docker-image://{REGISTRY}/busybox:latest"
            ))
            .arg(format!("--build-context=dir={}", dir_ctx.display()))
            .arg("-o")
            .arg(format!("type=local,dest={}", rootfs.display()))
            .arg(&second),
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("seen")).unwrap(),
        "from-layout\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("copied")).unwrap(),
        "from-layout\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert!(rootfs.join("bb").is_file());

    // A tag the layout does not hold is a clear error.
    let out = run(rbuild(&t.path().join("store3"))
        .arg(format!(
            "--build-context=base=oci-layout://{}:nope",
            layout.display()
        ))
        .arg(&second));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no image tagged `nope`"), "{stderr}");
}

/// A base tag is looked up in the registry once, then served from the store (offline
/// builds); `--pull` looks again and sees the tag moved.
#[test]
#[ignore = "needs root, docker and a registry"]
fn pull_flag_re_resolves_a_moved_base_tag() {
    needs_root_docker_and_registry();
    let t = tempfile::tempdir().unwrap();
    let base = format!("{REGISTRY}/rbuild-test/pull-flag-{}:1", std::process::id());
    // Each publish pushes a manifest under the same tag: both are deleted at the end.
    let publish = |content: &str| {
        let dir = t.path().join(format!("publish-{content}"));
        fs::create_dir(&dir).unwrap();
        fs::write(
            dir.join("Dockerfile"),
            format!("FROM {REGISTRY}/busybox\nRUN echo {content} > /v\n"),
        )
        .unwrap();
        run_ok(
            rbuild(&t.path().join("publisher"))
                .args(["-t", &base, "--push"])
                .arg(&dir),
        );
        RegistryImage::pushed(&base)
    };
    let user = t.path().join("user");
    fs::create_dir(&user).unwrap();
    fs::write(
        user.join("Dockerfile"),
        format!("FROM {base}\nRUN cat /v > /seen\n"),
    )
    .unwrap();
    let seen = |extra: &[&str]| {
        let out = t.path().join(format!("out-{}", extra.len()));
        let _ = fs::remove_dir_all(&out);
        run_ok(
            rbuild(&t.path().join("store"))
                .args(extra)
                .arg("-o")
                .arg(format!("type=local,dest={}", out.display()))
                .arg(&user),
        );
        fs::read_to_string(out.join("seen")).unwrap()
    };
    let _first = publish("first");
    assert_eq!(seen(&[]), "first\n");
    let _second = publish("second");
    assert_eq!(
        seen(&[]),
        "first\n",
        "without --pull the stored base is used"
    );
    assert_eq!(
        seen(&["--pull"]),
        "second\n",
        "--pull must see the moved tag"
    );
}

/// Issue 14: a unix socket in the build context (a dev server's, left in the checkout) is
/// copied as an empty regular file with the socket's permission bits, as BuildKit's context
/// transfer sends it; rbuild used to drop it. docker build must agree entry for entry.
#[test]
#[ignore = "needs root, docker and a registry"]
fn context_socket_is_copied_as_an_empty_regular_file() {
    use std::os::unix::fs::PermissionsExt;
    needs_root_docker_and_registry();
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    fs::create_dir_all(ctx.join("run")).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {REGISTRY}/busybox\nCOPY . /ctx/\n"),
    )
    .unwrap();
    fs::write(ctx.join("run/app.pid"), "1\n").unwrap();
    let sock = ctx.join("run/app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o750)).unwrap();

    let archive = t.path().join("image.tar");
    let tag = "rbuild-contexts/socket:rbuild";
    let docker_tag = "rbuild-contexts/socket:docker";
    // Removed again, also when an assertion fails: tests clean up what they make.
    let _images = DockerImages(vec![tag.to_string(), docker_tag.to_string()]);
    run_ok(
        rbuild(&t.path().join("store"))
            .args(["-t", tag, "-o"])
            .arg(format!("type=docker,dest={}", archive.display()))
            .arg(&ctx),
    );
    run_ok(docker().arg("load").arg("-i").arg(&archive));
    let got = docker_fs(tag);
    let entry = got
        .get("ctx/run/app.sock")
        .expect("the socket is in the image");
    assert_eq!(
        (entry.kind, entry.mode, entry.size),
        ('f', 0o750, 0),
        "{entry:?}"
    );

    run_ok(
        docker()
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network=host", "-q", "-t", docker_tag])
            .arg(&ctx),
    );
    let diffs = diff_listings(&docker_fs(docker_tag), &got);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
