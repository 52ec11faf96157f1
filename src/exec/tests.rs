//! The executor's decisions, watched through the recording fake executor
//! ([`super::fake::Recording`]): which steps hit the cache, which run, which make a
//! layer, and what goes into the keys. No root, no sandbox: the fake writes a file into the
//! upperdir where a step would change the rootfs.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::fake::{Call, Recording};
use super::*;
use crate::dockerfile::instructions::NetworkMode;
use crate::image::Platform;
use crate::registry::RegistryOptions;
use crate::sandbox::{Mount, Network, RunSpec};

struct Fixture {
    context: tempfile::TempDir,
    _store_dir: tempfile::TempDir,
    store: Store,
    registry: Client,
    exec: Recording,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Fixture {
        let context = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(context.path().join(name), content).unwrap();
        }
        let store_dir = tempfile::tempdir().unwrap();
        Fixture {
            context,
            store: Store::open(store_dir.path()).unwrap(),
            _store_dir: store_dir,
            registry: Client::new(RegistryOptions::default()).unwrap(),
            exec: Recording::default(),
        }
    }

    fn request(&self, dockerfile: &str) -> BuildRequest {
        BuildRequest {
            context: self.context.path().to_path_buf(),
            dockerfile_name: "Dockerfile".to_string(),
            dockerfile_path: None,
            dockerfile_text: dockerfile.to_string(),
            tags: Vec::new(),
            build_args: BTreeMap::new(),
            target: None,
            no_cache: false,
            explain: false,
            pull: false,
            labels: BTreeMap::new(),
            network: NetworkMode::Default,
            allow_network_host: false,
            allow_insecure: false,
            no_cache_stages: Vec::new(),
            extra_hosts: Vec::new(),
            shm_size: None,
            ulimits: Vec::new(),
            manifest_annotations: BTreeMap::new(),
            pids_limit: None,
            secrets: BTreeMap::new(),
            ssh: BTreeMap::new(),
            build_contexts: BTreeMap::new(),
            platform: Platform::host(),
            source_date_epoch: None,
            cache_from: Vec::new(),
            cache_to: Vec::new(),
            platform_labels: false,
            first_step: 1,
            step_counter: None,
        }
    }

    fn build(&self, req: &BuildRequest) -> Result<BuildOutcome, BuildError> {
        build_with(&self.store, &self.registry, req, &Silent, &self.exec)
    }

    /// Build, and return what the executor was asked to do.
    fn calls(&self, req: &BuildRequest) -> Vec<Call> {
        self.build(req).unwrap();
        self.exec.take()
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.context.path().join(name), content).unwrap();
    }
}

fn with_arg(mut req: BuildRequest, k: &str, v: &str) -> BuildRequest {
    req.build_args.insert(k.to_string(), v.to_string());
    req
}

fn runs(calls: &[Call]) -> Vec<RunSpec> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Run(spec) => Some(*spec.clone()),
            _ => None,
        })
        .collect()
}

fn copy(dest: &str, add: bool) -> Call {
    Call::Copy {
        dest: dest.to_string(),
        add,
    }
}

#[test]
fn run_is_cached_and_no_cache_runs_it_again() {
    let f = Fixture::new(&[]);
    let req = f.request("FROM scratch\nRUN echo hi\n");
    let first = f.build(&req).unwrap();
    let calls = f.exec.take();
    assert_eq!(runs(&calls).len(), 1);
    assert_eq!(calls.last(), Some(&Call::Commit), "RUN makes a layer");
    assert_eq!((first.cached, first.executed), (0, 1));
    assert_eq!(first.image.config.rootfs.diff_ids.len(), 1);

    let second = f.build(&req).unwrap();
    assert_eq!(f.exec.take(), [], "a cached step calls nothing");
    assert_eq!((second.cached, second.executed), (1, 0));
    assert_eq!(second.image.manifest.digest, first.image.manifest.digest);

    let no_cache = BuildRequest {
        no_cache: true,
        ..f.request("FROM scratch\nRUN echo hi\n")
    };
    let calls = f.calls(&no_cache);
    assert_eq!((runs(&calls).len(), calls.last()), (1, Some(&Call::Commit)));
}

/// A COPY run again (`--no-cache`) makes the layer the store has already. That copy never
/// becomes a record, so its snapshot syncs nothing (executor.rs): a first build syncs
/// before the layer's record, the rebuild does not.
#[test]
fn a_copy_run_again_that_makes_its_layer_again_syncs_nothing() {
    let f = Fixture::new(&[("a", "1")]);
    let df = "FROM scratch\nCOPY a /a\nWORKDIR /w\n";
    let syncs = f.store.syncs();
    let first = f.build(&f.request(df)).unwrap();
    assert_eq!(f.store.syncs() - syncs, 2, "one sync per new layer");

    let syncs = f.store.syncs();
    let no_cache = BuildRequest {
        no_cache: true,
        ..f.request(df)
    };
    let again = f.build(&no_cache).unwrap();
    assert_eq!((again.cached, again.executed), (0, 2));
    assert_eq!(f.store.syncs() - syncs, 0);
    // The layers, not the image: its `created` is the build's second.
    assert_eq!(
        again.image.config.rootfs.diff_ids,
        first.image.config.rootfs.diff_ids
    );
}

/// The same, when the copy comes out different under the same key: its new layer is
/// synced before its record, as a first build's is.
#[test]
fn a_copy_run_again_that_comes_out_different_is_synced_before_its_record() {
    let f = Fixture::new(&[("a", "1")]);
    let df = "FROM scratch\nCOPY a /a\n";
    let first = f.build(&f.request(df)).unwrap();

    *f.exec.copy_extra.lock().unwrap() = " changed".to_string();
    let syncs = f.store.syncs();
    let no_cache = BuildRequest {
        no_cache: true,
        ..f.request(df)
    };
    let again = f.build(&no_cache).unwrap();
    assert_eq!(f.store.syncs() - syncs, 1);
    let diff_ids = &again.image.config.rootfs.diff_ids;
    assert_ne!(diff_ids, &first.image.config.rootfs.diff_ids);
    let chain = crate::store::chain_id(None, &diff_ids[0]);
    assert!(f.store.layer(&chain).is_some(), "the new layer is recorded");
}

/// BuildKit's rule, which `docker history` shows: RUN always makes a layer, an empty one
/// when it changed nothing.
#[test]
fn a_run_that_changes_nothing_still_makes_a_layer() {
    let f = Fixture::new(&[]);
    f.exec.run_writes_nothing.store(true, Ordering::SeqCst);
    let built = f.build(&f.request("FROM scratch\nRUN true\n")).unwrap();
    assert_eq!(f.exec.take().last(), Some(&Call::Commit));
    assert_eq!(built.image.config.rootfs.diff_ids.len(), 1);
    assert!(!built.image.config.history[0].empty_layer);
}

#[test]
fn copy_and_add_hit_until_their_sources_change() {
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let req = f.request("FROM scratch\nCOPY a.txt /a\nADD b.txt /b\n");
    let both = [
        copy("/a", false),
        Call::Commit,
        copy("/b", true),
        Call::Commit,
    ];
    assert_eq!(f.calls(&req), both);
    assert_eq!(f.calls(&req), []);

    // Only the step whose source changed, and what follows it.
    f.write("b.txt", "b2");
    assert_eq!(f.calls(&req), [copy("/b", true), Call::Commit]);
    f.write("a.txt", "a2");
    assert_eq!(f.calls(&req), both);
    // The same content again: both from the cache (mtime is not in the key).
    f.write("a.txt", "a");
    f.write("b.txt", "b");
    assert_eq!(f.calls(&req), []);

    // COPY and ADD of the same file are different steps.
    let add = f.request("FROM scratch\nADD a.txt /a\nADD b.txt /b\n");
    assert_eq!(f.calls(&add)[0], copy("/a", true));
}

#[test]
fn workdir_makes_a_layer_only_when_it_creates_the_directory() {
    let f = Fixture::new(&[]);
    let text = "FROM scratch\nWORKDIR /w\nRUN pwd\n";
    let workdir = || Call::Workdir {
        path: "/w".to_string(),
    };
    let created = f.build(&f.request(text)).unwrap();
    let calls = f.exec.take();
    assert_eq!(calls[..2], [workdir(), Call::Commit]);
    assert_eq!(created.image.config.rootfs.diff_ids.len(), 2);
    let history = &created.image.config.history;
    assert!(!history[0].empty_layer && !history[1].empty_layer);
    assert_eq!(f.calls(&f.request(text)), [], "both cached");

    f.exec.workdir_exists.store(true, Ordering::SeqCst);
    let existing = f
        .build(&BuildRequest {
            no_cache: true,
            ..f.request(text)
        })
        .unwrap();
    let calls = f.exec.take();
    assert_eq!(calls[0], workdir());
    assert_eq!(calls[1..].iter().filter(|c| **c == Call::Commit).count(), 1);
    assert_eq!(existing.image.config.rootfs.diff_ids.len(), 1);
    assert!(existing.image.config.history[0].empty_layer);
    assert_eq!(
        f.calls(&f.request(text)),
        [],
        "an empty WORKDIR is cached too"
    );
}

#[test]
fn config_only_steps_call_no_executor_and_keep_their_history_time() {
    let f = Fixture::new(&[]);
    let text = "FROM scratch\nENV A=b\nLABEL x=y\nCMD [\"run\"]\nUSER 1000\n";
    let first = f.build(&f.request(text)).unwrap();
    assert_eq!(f.exec.take(), []);
    let config = &first.image.config;
    assert!(config.rootfs.diff_ids.is_empty());
    assert!(config.history.iter().all(|h| h.empty_layer));
    assert_eq!(config.history.len(), 4);
    assert!(config
        .config
        .env
        .as_ref()
        .is_some_and(|e| e.iter().any(|v| v == "A=b")));

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = f.build(&f.request(text)).unwrap();
    assert_eq!(f.exec.take(), []);
    assert_eq!(
        second.image.manifest.digest, first.image.manifest.digest,
        "cached config steps keep their created time, so the image id"
    );
}

#[test]
fn a_changed_build_arg_misses_and_the_old_value_hits_again() {
    let f = Fixture::new(&[]);
    let text = "FROM scratch\nARG V\nRUN echo $V\nRUN echo after\n";
    let req = |v: &str| with_arg(f.request(text), "V", v);
    assert_eq!(runs(&f.calls(&req("1"))).len(), 2);
    let calls = f.calls(&req("2"));
    assert_eq!(
        runs(&calls).len(),
        2,
        "the arg's step and every one after it"
    );
    assert!(runs(&calls)[0].env.contains(&"V=2".to_string()));
    assert_eq!(f.calls(&req("1")), []);
    // An arg the Dockerfile does not declare changes nothing.
    assert_eq!(f.calls(&with_arg(req("1"), "UNUSED", "x")), []);
}

/// What the executor hands the sandbox for the Dockerfile's RUN steps, from a store of its
/// own (so nothing is cached), minus what is deliberately left out of the cache key: the
/// proxy variables (BuildKit drops ProxyEnv from an exec op's key), `--add-host` addresses
/// (dropped from it too) and `--pids-limit` (a limit can make a step fail, never make it
/// produce something else).
fn run_specs(req: &BuildRequest) -> Vec<RunSpec> {
    let f = Fixture::new(&[]);
    let req = BuildRequest {
        dockerfile_path: None,
        tags: Vec::new(),
        no_cache: true,
        explain: false,
        pull: false,
        ..req.clone()
    };
    let proxy = |v: &String| {
        let name = v.split('=').next().unwrap_or_default().to_ascii_lowercase();
        matches!(
            name.as_str(),
            "http_proxy" | "https_proxy" | "ftp_proxy" | "no_proxy" | "all_proxy"
        )
    };
    runs(&f.calls(&req))
        .into_iter()
        .map(|mut spec| {
            spec.env.retain(|v| !proxy(v));
            spec.pids_limit = None;
            // BuildKit clears an --add-host's address from the exec op's key too.
            for (_, ip) in &mut spec.extra_hosts {
                ip.clear();
            }
            spec
        })
        .collect()
}

/// Regression (issue 15): `rbuild .` then `rbuild --network none .` reused RUN steps that
/// ran with the network. Everything the executor resolves for a RUN at run time (network,
/// hostname, platform, security mode) must be in its key: for each variation of a build,
/// if the sandbox would be asked something else, the step must miss. The proxy variables
/// are the exception (BuildKit's too): they change the step's env but hit.
fn with_host(req: BuildRequest, host: &str, ip: &str) -> BuildRequest {
    BuildRequest {
        extra_hosts: vec![crate::plan::ExtraHost {
            host: host.into(),
            ip: ip.into(),
        }],
        ..req
    }
}

#[test]
fn everything_the_executor_resolves_for_run_is_in_the_key() {
    let f = Fixture::new(&[]);
    let text = "FROM scratch\nRUN echo hi\n";
    let base = f.request(text);
    assert_eq!(runs(&f.calls(&base)).len(), 1);
    let base_specs = run_specs(&base);

    let network = |mode| BuildRequest {
        network: mode,
        allow_network_host: true,
        ..f.request(text)
    };
    let mut variant = Platform::host();
    variant.variant = Some("v9".to_string());
    let variations: Vec<(&str, BuildRequest, bool)> = vec![
        ("--network none", network(NetworkMode::None), true),
        ("--network host", network(NetworkMode::Host), true),
        (
            "sandbox hostname",
            with_arg(f.request(text), "BUILDKIT_SANDBOX_HOSTNAME", "other"),
            true,
        ),
        (
            "platform",
            BuildRequest {
                platform: variant,
                ..f.request(text)
            },
            true,
        ),
        // The default mode spelt out: the same step (BuildKit's exec op is the same too).
        (
            "--security=sandbox",
            f.request("FROM scratch\nRUN --security=sandbox echo hi\n"),
            false,
        ),
        (
            "proxy build arg",
            with_arg(f.request(text), "HTTP_PROXY", "http://proxy:3128"),
            false,
        ),
        (
            "--pids-limit",
            BuildRequest {
                pids_limit: Some(10),
                ..f.request(text)
            },
            false,
        ),
        (
            "--security=insecure",
            BuildRequest {
                allow_insecure: true,
                ..f.request("FROM scratch\nRUN --security=insecure echo hi\n")
            },
            true,
        ),
        (
            "--allow security.insecure alone",
            BuildRequest {
                allow_insecure: true,
                ..f.request(text)
            },
            false,
        ),
        (
            "--add-host",
            with_host(f.request(text), "db", "10.0.0.1"),
            true,
        ),
        (
            "--shm-size",
            BuildRequest {
                shm_size: Some(1 << 30),
                ..f.request(text)
            },
            true,
        ),
        (
            "--ulimit",
            BuildRequest {
                ulimits: vec![crate::plan::Ulimit {
                    name: "nofile".into(),
                    soft: 100,
                    hard: 200,
                }],
                ..f.request(text)
            },
            true,
        ),
    ];
    for (what, req, should_miss) in &variations {
        let ran = runs(&f.calls(req));
        assert_eq!(!ran.is_empty(), *should_miss, "{what}: {ran:?}");
        if run_specs(req) != base_specs {
            assert!(
                !ran.is_empty(),
                "{what} changes what the sandbox is asked but hits the cache"
            );
        }
        // And the base build still hits: nothing above overwrote its record.
        assert_eq!(f.calls(&base), [], "{what}");
    }

    // What the sandbox got for each.
    let network_of = |req: &BuildRequest| run_specs(req)[0].network;
    assert_eq!(network_of(&base), Network::Isolated);
    assert_eq!(network_of(&variations[0].1), Network::None);
    assert_eq!(network_of(&variations[1].1), Network::Host);
    assert_eq!(run_specs(&variations[2].1)[0].hostname, "other");
    let spec_of = |what: &str| {
        let (_, req, _) = variations.iter().find(|(w, _, _)| *w == what).unwrap();
        run_specs(req).remove(0)
    };
    assert_eq!(
        base_specs[0].security,
        crate::sandbox::SecurityMode::Sandbox
    );
    assert_eq!(
        spec_of("--security=insecure").security,
        crate::sandbox::SecurityMode::Insecure
    );
    assert_eq!(
        spec_of("--ulimit").rlimits,
        [crate::sandbox::Rlimit {
            resource: crate::sandbox::RlimitResource::Nofile,
            soft: 100,
            hard: 200
        }]
    );
    assert!(
        matches!(spec_of("--shm-size").mounts.as_slice(),
            [Mount::Tmpfs { target, size: Some(s) }] if target == "/dev/shm" && *s == 1 << 30),
        "{:?}",
        spec_of("--shm-size").mounts
    );
    // An --add-host's address reaches the step but not the key: a new address hits.
    let hosts = with_host(f.request(text), "db", "10.0.0.1");
    let moved = with_host(f.request(text), "db", "10.0.0.2");
    assert_eq!(f.calls(&hosts), []);
    assert_eq!(f.calls(&moved), []);
    let fresh = Fixture::new(&[]);
    assert_eq!(
        runs(&fresh.calls(&moved))[0].extra_hosts,
        [("db".to_string(), "10.0.0.2".to_string())]
    );
    let proxied = {
        let f = Fixture::new(&[]);
        let req = BuildRequest {
            no_cache: true,
            ..with_arg(f.request(text), "HTTP_PROXY", "http://proxy:3128")
        };
        runs(&f.calls(&req)).remove(0)
    };
    assert!(
        proxied
            .env
            .contains(&"HTTP_PROXY=http://proxy:3128".to_string()),
        "{:?}",
        proxied.env
    );
}

#[test]
fn a_failed_run_names_its_line_shows_its_output_and_is_not_cached() {
    let f = Fixture::new(&[]);
    f.exec.exit_code.store(3, Ordering::SeqCst);
    let req = f.request("FROM scratch\nENV A=1\nRUN exit 3\n");
    let err = f.build(&req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Dockerfile:3: process \"/bin/sh -c exit 3\" did not complete successfully: \
         exit code: 3\n   3 | RUN exit 3\n------ last output lines:\n > fake output\n------"
    );
    let calls = f.exec.take();
    assert_eq!(runs(&calls).len(), 1);
    assert!(
        !calls.contains(&Call::Commit),
        "a failed step commits nothing"
    );
    f.exec.exit_code.store(0, Ordering::SeqCst);
    assert_eq!(runs(&f.calls(&req)).len(), 1, "the failed step ran again");
}

#[test]
fn cache_mounts_live_in_the_store() {
    let f = Fixture::new(&[]);
    let req = f.request("FROM scratch\nRUN --mount=type=cache,target=/c,sharing=locked true\n");
    let spec = runs(&f.calls(&req)).remove(0);
    let [Mount::Cache { source, target, .. }] = &spec.mounts[..] else {
        panic!("{:?}", spec.mounts);
    };
    assert_eq!(target, "/c");
    assert!(
        source.starts_with(f.store.root().join("mounts/cache")),
        "{source:?}"
    );
    assert!(source.parent().unwrap().exists());
}

/// Stages that do not depend on each other build at once, each with a context of its own;
/// their steps are counted and cached like the others.
#[test]
fn parallel_stages_are_cached_and_counted() {
    let f = Fixture::new(&[]);
    let text = "FROM scratch AS a\nRUN a\nFROM scratch AS b\nRUN b\n\
                FROM scratch\nCOPY --from=a /ran /a\nCOPY --from=b /ran /b\n";
    let first = f.build(&f.request(text)).unwrap();
    let calls = f.exec.take();
    assert_eq!(runs(&calls).len(), 2);
    assert_eq!((first.cached, first.executed), (0, 4));
    let second = f.build(&f.request(text)).unwrap();
    assert_eq!(f.exec.take(), []);
    assert_eq!((second.cached, second.executed), (4, 0));
}

/// Errors carry their location as data (BuildKit's WithLocation), around the typed cause.
#[test]
fn step_errors_carry_their_location_around_the_typed_cause() {
    let f = Fixture::new(&[]);
    let err = f
        .build(&f.request("FROM scratch\nCOPY missing.txt /m\n"))
        .unwrap_err();
    let BuildError::At {
        file,
        line,
        excerpt,
        source,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((file.as_str(), *line), ("Dockerfile", 2));
    assert_eq!(excerpt, "   2 | COPY missing.txt /m");
    assert!(matches!(**source, BuildError::Context(_)), "{source:?}");
    assert_eq!(
        err.to_string(),
        format!("Dockerfile:2: {source}\n   2 | COPY missing.txt /m")
    );
    assert_eq!(err.cause().to_string(), source.to_string());

    let host = f.request("FROM scratch\nRUN --network=host true\n");
    let err = f.build(&host).unwrap_err();
    assert!(
        matches!(&err, BuildError::At { line: 2, source, .. }
            if matches!(**source, BuildError::Invalid(_))),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("Dockerfile:2: network.host is not allowed"));
    assert_eq!(f.exec.take(), []);

    // BuildKit's entitlement for --security=insecure, checked before any step runs: the
    // RUN before it does not run either, even though it comes first.
    let insecure = f.request("FROM scratch\nRUN true\nRUN --security=insecure true\n");
    let err = f.build(&insecure).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Dockerfile:3: security.insecure is not allowed: RUN --security=insecure needs `--allow security.insecure`"),
        "{err}"
    );
    assert_eq!(f.exec.take(), []);
    let allowed = BuildRequest {
        allow_insecure: true,
        ..insecure
    };
    assert_eq!(runs(&f.calls(&allowed)).len(), 2);
}

/// `--no-cache-filter STAGE`: that stage's RUN/COPY steps run again, the others' hit, and
/// the name is matched without regard to case (BuildKit's IsNoCache).
#[test]
fn no_cache_filter_reruns_only_the_named_stages() {
    let f = Fixture::new(&[]);
    f.write("a.txt", "a");
    let text = "FROM scratch AS deps\nRUN echo deps\nCOPY a.txt /a\n\
                FROM scratch AS app\nCOPY --from=deps /a /a\nRUN echo app\n";
    let first = f.calls(&f.request(text));
    assert_eq!(runs(&first).len(), 2);
    assert_eq!(f.calls(&f.request(text)), []);
    let filtered = |names: &[&str]| BuildRequest {
        no_cache_stages: names.iter().map(|n| n.to_string()).collect(),
        ..f.request(text)
    };
    let argv = |calls: &[Call]| -> Vec<String> {
        runs(calls)
            .into_iter()
            .map(|r| r.argv.last().cloned().unwrap_or_default())
            .collect()
    };
    let deps = f.calls(&filtered(&["DEPS"]));
    assert_eq!(argv(&deps), ["echo deps"]);
    assert_eq!(
        deps.iter()
            .filter(|c| matches!(c, Call::Copy { .. }))
            .count(),
        1,
        "{deps:?}"
    );
    assert_eq!(argv(&f.calls(&filtered(&["app"]))), ["echo app"]);
    assert_eq!(
        argv(&f.calls(&filtered(&["app", "deps"]))),
        ["echo deps", "echo app"]
    );
}

#[test]
fn ssh_mounts_get_a_socket_for_the_step_only_and_stay_out_of_the_key() {
    let f = Fixture::new(&[]);
    let agents = tempfile::tempdir().unwrap();
    let agent = |name: &str| {
        let path = agents.path().join(name);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        (path, listener)
    };
    let (sock_a, _la) = agent("a");
    let (sock_b, _lb) = agent("b");
    let dockerfile =
        "FROM scratch\nRUN --mount=type=ssh,id=a --mount=type=ssh,id=gone,target=/g true\n";
    let mut req = f.request(dockerfile);
    req.ssh
        .insert("a".into(), SshSource::Socket(sock_a.clone()));
    let spec = runs(&f.calls(&req)).remove(0);
    // The optional mount nobody gave is left out; the given one is bound on BuildKit's
    // default target, and SSH_AUTH_SOCK names the first ssh mount's target.
    let ssh: Vec<&Mount> = spec
        .mounts
        .iter()
        .filter(|m| matches!(m, Mount::Ssh { .. }))
        .collect();
    let [Mount::Ssh { socket, target }] = ssh.as_slice() else {
        panic!("{:?}", spec.mounts);
    };
    assert_eq!(target, "/run/buildkit/ssh_agent.0");
    assert!(spec
        .env
        .contains(&"SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0".to_string()));
    assert!(!socket.exists(), "the relay socket outlived its step");

    // Another agent for the same id: the step is cached.
    req.ssh.insert("a".into(), SshSource::Socket(sock_b));
    assert_eq!(runs(&f.calls(&req)).len(), 0);

    // required=true without --ssh: BuildKit's error, naming the id.
    let req = f.request("FROM scratch\nRUN --mount=type=ssh,id=deploy,required=true true\n");
    let err = crate::error::render_chain(&f.build(&req).unwrap_err());
    assert!(
        err.contains("no SSH key \"deploy\" forwarded from the client")
            && err.contains("--ssh deploy="),
        "{err}"
    );
}

/// Issue 23: a step's cache record keeps its own layer's diff_id and history entry, not the
/// stage's lists up to it, so the records of n steps take O(n) bytes (they took O(n²): 200
/// steps wrote ~70x the bytes of 20). A rebuild from the short records hits every step
/// and makes the same image.
#[test]
fn cache_records_grow_linearly_in_the_steps() {
    let record_bytes = |n: usize| -> u64 {
        let f = Fixture::new(&[]);
        let steps: String = (0..n).map(|i| format!("RUN echo {i}\n")).collect();
        let req = f.request(&format!("FROM scratch\n{steps}"));
        let first = f.build(&req).unwrap();
        let again = f.build(&req).unwrap();
        assert_eq!((again.cached, again.executed), (n, 0));
        assert_eq!(again.image.manifest.digest, first.image.manifest.digest);
        assert_eq!(again.image.config.rootfs.diff_ids.len(), n);
        let cache = f.store.root().join("cache");
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let (small, big) = (record_bytes(20), record_bytes(200));
    assert!(
        big < small * 15,
        "cache records of 20 steps: {small} bytes, of 200: {big} bytes"
    );
}

/// A cache hit writes no listing of its sources (issue 23): the key's walk only spools
/// them, and only a miss writes the spool out as a listing to keep. A miss on a content
/// seen before reuses the kept listing. (Before, every COPY from the context wrote one to a
/// temp file, hit or not.)
#[test]
fn a_cache_hit_writes_no_listing_of_its_sources() {
    let f = Fixture::new(&[("a.txt", "a"), ("b.txt", "b")]);
    let req = f.request("FROM scratch\nCOPY . /src\n");
    let listings = || f.store.listings_made();
    f.build(&req).unwrap();
    assert_eq!(listings(), 1, "a first build keeps its sources' listing");
    let again = f.build(&req).unwrap();
    assert_eq!((again.cached, again.executed), (1, 0));
    assert_eq!(listings(), 1, "a cached rebuild wrote a listing");

    // A changed file: a miss, a new listing, and the reason names the file from it.
    f.write("b.txt", "b2");
    let mut explain = req.clone();
    explain.explain = true;
    let changed = f.build(&explain).unwrap();
    assert_eq!(listings(), 2);
    let reason = changed.steps[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("b.txt"), "{reason}");
    // Back to the first content: the record is there, so a hit again.
    f.write("b.txt", "b");
    assert_eq!(f.build(&req).unwrap().cached, 1);
    assert_eq!(listings(), 2);
    // --no-cache misses on a content whose listing is kept: nothing written.
    let mut no_cache = req.clone();
    no_cache.no_cache = true;
    f.build(&no_cache).unwrap();
    assert_eq!(listings(), 2);
}
