//! The golden corpus testdata/checks/<Rule>/{fires,quiet}/{Dockerfile,options,expected}:
//! `fires` must report the rule, `quiet` must not, and both must match `expected` (the
//! text report). `UPDATE_GOLDEN=1` rewrites the `expected` files.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::context::IgnoreMatcher;

/// Base images for the corpus: every image has PATH (and `golang*` GOPATH, as the real
/// one); `arm*` images are linux/arm64, `missing*` cannot be found, `shell*` set a SHELL.
struct FakeBases;

impl BaseImages for FakeBases {
    fn lookup(&mut self, reference: &str) -> Option<BaseImage> {
        if reference.starts_with("missing") {
            return None;
        }
        let mut env = vec![(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        )];
        if reference.starts_with("golang") {
            env.push(("GOPATH".into(), "/go".into()));
        }
        Some(BaseImage {
            env,
            shell: reference.starts_with("shell"),
            os: "linux".into(),
            architecture: if reference.starts_with("arm") {
                "arm64".into()
            } else {
                "amd64".into()
            },
            variant: None,
        })
    }
}

fn platform() -> crate::image::Platform {
    crate::image::Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        os_version: None,
    }
}

/// Run a case directory: `options` lines are `build-arg K=V`, `target NAME`,
/// `dockerignore PATTERN` (one line per pattern) and `build` (check only the target's
/// stages, as a build does; the default is all stages, as `rbuild check`).
fn run_case(dir: &Path) -> (Report, String) {
    let text = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let options = std::fs::read_to_string(dir.join("options")).unwrap_or_default();
    let mut build_args = BTreeMap::new();
    let mut target = None;
    let mut ignore = Vec::new();
    let mut all_stages = true;
    for line in options.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        match k {
            "build-arg" => {
                let (a, b) = v.split_once('=').unwrap_or((v, ""));
                build_args.insert(a.to_string(), b.to_string());
            }
            "target" => target = Some(v.to_string()),
            "dockerignore" => ignore.push(v.to_string()),
            "build" => all_stages = false,
            "" => {}
            other => panic!("unknown option {other} in {}", dir.display()),
        }
    }
    let matcher = IgnoreMatcher::new(&ignore).unwrap();
    let opts = CheckOptions {
        file_name: "Dockerfile",
        build_args,
        target: target.as_deref(),
        platform: platform(),
        all_stages,
        ignore: (!ignore.is_empty()).then_some(&matcher),
        context: None,
    };
    match check(&text, &opts, &mut FakeBases) {
        Ok(report) => {
            let mut out = render::report_text(&report, &text);
            if let Some(v) = report.violation() {
                out.push_str(&format!("error: {v}\n"));
            }
            (report, out)
        }
        Err(e) => (
            Report {
                file: String::new(),
                warnings: Vec::new(),
                error_level: false,
            },
            format!("error: {e}\n"),
        ),
    }
}

#[test]
fn corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/checks");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    let mut rule_dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    rule_dirs.sort();
    for dir in &rule_dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let rule = rules::find(&name);
        for case in ["fires", "quiet"] {
            let case_dir = dir.join(case);
            if !case_dir.join("Dockerfile").exists() {
                // Every rule directory has both; other directories (controls) may not.
                if rule.is_some() {
                    failed.push(format!("{name}/{case}: missing"));
                }
                continue;
            }
            let (report, got) = run_case(&case_dir);
            let golden = case_dir.join("expected");
            if update {
                std::fs::write(&golden, &got).unwrap();
            } else if std::fs::read_to_string(&golden).unwrap_or_default() != got {
                eprintln!("--- {}\n{got}", case_dir.display());
                failed.push(format!("{name}/{case}: output differs"));
            }
            if let Some(rule) = rule {
                let fired = report.warnings.iter().any(|w| w.rule.name == rule.name);
                if fired != (case == "fires") {
                    failed.push(format!("{name}/{case}: fired={fired}"));
                }
                if case == "fires" && fired {
                    covered.insert(rule.name);
                }
            }
        }
    }
    assert!(failed.is_empty(), "check corpus: {failed:?}");
    let missing: Vec<&str> = RULES
        .iter()
        .map(|r| r.name)
        .filter(|n| !covered.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a firing case: {missing:?}"
    );
}

/// Cases from BuildKit's own lint tests (frontend/dockerfile/dockerfile_check_test.go),
/// with the rule, line and message BuildKit expects: the differential test for rules that
/// docker 20.10's frontend cannot check. `scratch` and `alpine`/`busybox` bases.
#[test]
fn buildkit_expectations() {
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [(&'static str, usize, &'static str)],
    );
    let cases: &[Case] = &[
        (
            "\nFROM scratch\n# warning: empty continuation line\nCOPY Dockerfile \\\n\n.\nCOPY Dockerfile \\\n.\n",
            &[],
            &[("NoEmptyContinuation", 6, "Empty continuation line")],
        ),
        (
            "\n# warning: 'FROM' should be either lowercased or uppercased\n#\nFrom scratch as base\nFROM scratch AS base2\n",
            &[],
            &[("ConsistentInstructionCasing", 4, "Command 'From' should match the case of the command majority (uppercase)")],
        ),
        (
            "\nfrom scratch\n# warning: 'COPY' should match command majority's casing (lowercase)\nCOPY Dockerfile /foo\ncopy Dockerfile /bar\n",
            &[],
            &[("ConsistentInstructionCasing", 4, "Command 'COPY' should match the case of the command majority (lowercase)")],
        ),
        (
            "\n# warning: 'FROM' should match command majority's casing (lowercase)\n#\nFROM scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\ncopy Dockerfile /baz\n",
            &[],
            &[("ConsistentInstructionCasing", 4, "Command 'FROM' should match the case of the command majority (lowercase)")],
        ),
        ("\nFROM alpine\nRUN <<'EOT'\nenv\nEOT\n", &[], &[]),
        ("\nARG base=scratch\nFROM $base\nCOPY Dockerfile .\n", &[], &[]),
        ("\nFROM --platform=$BUILDPLATFORM scratch\nCOPY Dockerfile .\n", &[], &[]),
        ("\nARG DEBUG\nFROM scra${DEBUG:-tch}\nCOPY Dockerfile .\n", &[], &[]),
        (
            "\nFROM --platform=$BULIDPLATFORM scratch\nCOPY Dockerfile .\n",
            &[],
            &[("UndefinedArgInFrom", 2, "FROM argument 'BULIDPLATFORM' is not declared (did you mean BUILDPLATFORM?)")],
        ),
        (
            "\nARG MY_OS=linux\nARG MY_ARCH=amd64\nFROM --platform=linux/${MYARCH} busybox\nCOPY Dockerfile .\n",
            &[],
            &[("UndefinedArgInFrom", 4, "FROM argument 'MYARCH' is not declared (did you mean MY_ARCH?)")],
        ),
        (
            "\nARG tag=latest\nFROM busybox:${tag}${version} AS b\nCOPY Dockerfile .\n",
            &[],
            &[("UndefinedArgInFrom", 3, "FROM argument 'version' is not declared")],
        ),
        (
            "\nFROM scratch\nWORKDIR app/\n",
            &[],
            &[("WorkdirRelativePath", 3, "Relative workdir \"app/\" can have unexpected results if the base image changes")],
        ),
        ("\nFROM scratch AS a\nWORKDIR /app\n\nFROM a AS b\nWORKDIR subdir/\n", &[], &[]),
        ("\nFROM scratch\n# check=skip=WorkdirRelativePath\nWORKDIR app/\n", &[], &[]),
        ("\nFROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n", &[], &[]),
        ("\nFROM alpine AS base\nARG foo=Dockerfile\n\nFROM base\nCOPY $foo .\n", &[], &[]),
        // Declared without a value in the parent stage: still declared (buildArgs carry over).
        ("\nFROM alpine AS base\nARG foo\n\nFROM base\nCOPY x$foo .\n", &[], &[]),
        ("\nFROM alpine\nRUN echo $PATH\n", &[], &[]),
        // rbuild's own cases of the same rule: EXPOSE is not judged, RUN --mount and
        // ADD --checksum are (BuildKit's Expand hooks).
        ("\nFROM alpine\nEXPOSE $PORT\n", &[], &[]),
        (
            "\nFROM alpine\nCOPY <<EOF /motd\nhello $NAME\nEOF\nCOPY <<'EOF' /raw\n$NOT_EXPANDED\nEOF\n",
            &[],
            &[("UndefinedVar", 3, "Usage of undefined variable '$NAME'")],
        ),
        (
            "\nFROM alpine\nRUN --mount=type=cache,target=$CACHE_DIR true\n",
            &[],
            &[("UndefinedVar", 3, "Usage of undefined variable '$CACHE_DIR'")],
        ),
        (
            "\nFROM alpine\nADD --checksum=$SUM https://example.com/a /a\n",
            &[],
            &[("UndefinedVar", 3, "Usage of undefined variable '$SUM'")],
        ),
        (
            "\nFROM alpine\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n",
            &[],
            &[("UndefinedVar", 3, "Usage of undefined variable '$foo'")],
        ),
        (
            "\nFROM alpine\nARG DIR_BINARIES=binaries/\nARG DIR_ASSETS=assets/\nARG DIR_CONFIG=config/\nCOPY $DIR_ASSET .\n",
            &[],
            &[("UndefinedVar", 6, "Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?)")],
        ),
        (
            "\nFROM alpine\nENV PATH=$PAHT:/tmp/bin\n",
            &[],
            &[("UndefinedVar", 3, "Usage of undefined variable '$PAHT' (did you mean $PATH?)")],
        ),
        (
            "\nFROM scratch\nENTRYPOINT [\"/myapp\"]\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n",
            &[],
            &[
                ("MultipleInstructionsDisallowed", 3, "Multiple ENTRYPOINT instructions should not be used in the same stage because only the last one will be used"),
                ("MultipleInstructionsDisallowed", 5, "Multiple CMD instructions should not be used in the same stage because only the last one will be used"),
                ("MultipleInstructionsDisallowed", 7, "Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used"),
            ],
        ),
        (
            "\nFROM scratch AS a\nENTRYPOINT [\"/myapp\"]\nCMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\n\nFROM a AS b\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n",
            &[],
            &[],
        ),
        (
            "\nFROM scratch\nENV testkey value\nLABEL key value\n",
            &[],
            &[
                ("LegacyKeyValueFormat", 3, "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"),
                ("LegacyKeyValueFormat", 4, "\"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format"),
            ],
        ),
        (
            "\nFROM scratch\n# check=skip=LegacyKeyValueFormat\nENV testkey value\n# check=skip=LegacyKeyValueFormat\nLABEL key value\n",
            &[],
            &[],
        ),
        (
            "\nFROM --platform=${TARGETPLATFORM} scratch\n",
            &[],
            &[("RedundantTargetPlatform", 2, "Setting platform to predefined ${TARGETPLATFORM} in FROM is redundant as this is the default behavior")],
        ),
        ("# check=skip=RedundantTargetPlatform\nFROM --platform=$TARGETPLATFORM scratch\n", &[], &[]),
        (
            "\nARG VERSION\nFROM busybox:$VERSION\n",
            &[("VERSION", "latest")],
            &[("InvalidDefaultArgInFrom", 3, "Default value for ARG busybox:$VERSION results in empty or invalid base image name")],
        ),
        (
            "\nARG SFX=\"box:\"\nFROM busy${SFX}\n",
            &[("SFX", "box:latest")],
            &[("InvalidDefaultArgInFrom", 3, "Default value for ARG busy${SFX} results in empty or invalid base image name")],
        ),
        ("\nARG BUSYBOX_VARIANT=\"\"\nFROM busybox:stable${BUSYBOX_VARIANT}\n", &[("BUSYBOX_VARIANT", "-musl")], &[]),
        ("\nFROM --platform=linux/amd64 scratch AS my_amd64_stage\n", &[], &[]),
        ("\nFROM --platform=linux/amd64 scratch AS linux\n", &[], &[]),
        (
            "\nFROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n",
            &[],
            &[
                ("ExposeProtoCasing", 3, "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase"),
                ("ExposeProtoCasing", 3, "Defined protocol '8080/TCP' in EXPOSE instruction should be lowercase"),
            ],
        ),
        (
            "\nFROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n",
            &[],
            &[
                ("ExposeInvalidFormat", 3, "EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80'"),
                ("ExposeInvalidFormat", 3, "EXPOSE instruction should not define an IP address or host-port mapping, found '[::1]:8080:8080'"),
                ("ExposeInvalidFormat", 3, "EXPOSE instruction should not define an IP address or host-port mapping, found '5000:5000'"),
            ],
        ),
        (
            "# check=skip=InvalidDefinitionDescription\n\nFROM scratch\nARG SECRET_PASSPHRASE\nENV SUPER_Secret=foo\nENV password=bar secret=baz\nARG super_duper_secret_token=foo auth=bar\nENV apikey=bar sunflower=foo\nENV git_key=\nENV PUBLIC_KEY=\nARG public_token\nARG SECRET_PASSPHRASE_FILE\nENV password_file=bar secret_File=baz\nARG AUTH_MODULE_VERSION\n# check=skip=SecretsUsedInArgOrEnv // allow secret in environment\nENV password=bar\n# check=skip=SecretsUsedInArgOrEnv // allow secret in arg\nARG password\n# check=skip=all // is local to only this instruction\nENV alternate_password=bar\n# check=skip=all // is local to only this instruction\nARG alternate_password\n",
            &[],
            &[
                ("SecretsUsedInArgOrEnv", 4, "Do not use ARG or ENV instructions for sensitive data (ARG \"SECRET_PASSPHRASE\")"),
                ("SecretsUsedInArgOrEnv", 5, "Do not use ARG or ENV instructions for sensitive data (ENV \"SUPER_Secret\")"),
                ("SecretsUsedInArgOrEnv", 6, "Do not use ARG or ENV instructions for sensitive data (ENV \"password\")"),
                ("SecretsUsedInArgOrEnv", 6, "Do not use ARG or ENV instructions for sensitive data (ENV \"secret\")"),
                ("SecretsUsedInArgOrEnv", 7, "Do not use ARG or ENV instructions for sensitive data (ARG \"super_duper_secret_token\")"),
                ("SecretsUsedInArgOrEnv", 7, "Do not use ARG or ENV instructions for sensitive data (ARG \"auth\")"),
                ("SecretsUsedInArgOrEnv", 8, "Do not use ARG or ENV instructions for sensitive data (ENV \"apikey\")"),
                ("SecretsUsedInArgOrEnv", 9, "Do not use ARG or ENV instructions for sensitive data (ENV \"git_key\")"),
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (text, args, want) in cases {
        let opts = CheckOptions {
            file_name: "Dockerfile",
            build_args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: platform(),
            all_stages: true,
            ..Default::default()
        };
        let report = check(text, &opts, &mut FakeBases).unwrap();
        let mut got: Vec<(&str, usize, String)> = report
            .warnings
            .iter()
            .map(|w| (w.rule.name, w.span.line, w.message.clone()))
            .collect();
        let mut want: Vec<(&str, usize, String)> = want
            .iter()
            .map(|(r, l, m)| (*r, *l, m.to_string()))
            .collect();
        got.sort();
        want.sort();
        if got != want {
            failed.push(format!("{text}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The Bad example of every docs/checks/<Rule>.md fires its rule and the Good one does not
/// (a `# .dockerignore: PATTERN` line in an example stands for the ignore file).
#[test]
fn documented_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/checks");
    let mut failed = Vec::new();
    for rule in RULES {
        let page = std::fs::read_to_string(dir.join(format!("{}.md", rule.name)))
            .unwrap_or_else(|e| panic!("docs/checks/{}.md: {e}", rule.name));
        let example = |heading: &str| -> String {
            let after = page
                .split(&format!("## {heading}\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("{}: no {heading} section", rule.name));
            let block = after.split("```dockerfile\n").nth(1).unwrap();
            block.split("```").next().unwrap().to_string()
        };
        for (heading, should_fire) in [("Bad", true), ("Good", false)] {
            let text = example(heading);
            let ignore: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# .dockerignore: "))
                .map(str::to_string)
                .collect();
            let matcher = IgnoreMatcher::new(&ignore).unwrap();
            let opts = CheckOptions {
                file_name: "Dockerfile",
                platform: platform(),
                all_stages: true,
                ignore: (!ignore.is_empty()).then_some(&matcher),
                ..Default::default()
            };
            let report = check(&text, &opts, &mut FakeBases).unwrap();
            let fired = report.warnings.iter().any(|w| w.rule.name == rule.name);
            if fired != should_fire {
                failed.push(format!("{} {heading}: fired={fired}", rule.name));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}

/// A build context of fixed files: `files` answers for `.` and for a file's own name.
#[derive(Debug)]
struct FakeContext(Vec<(&'static str, &'static str)>);

impl ContextFiles for FakeContext {
    fn files(&self, source: &str, excludes: &[String]) -> Option<Vec<String>> {
        let source = source.trim_start_matches("./").trim_end_matches('/');
        Some(
            self.0
                .iter()
                .map(|(p, _)| p.to_string())
                .filter(|p| source.is_empty() || source == "." || p == source)
                .filter(|p| !excludes.contains(p))
                .collect(),
        )
    }
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, body)| body.as_bytes().to_vec())
    }
}

/// SecretFileCopied with a context: what a directory copy brings counts, and an .npmrc
/// only with a token in it.
#[test]
fn secret_files_in_the_copied_context() {
    let run = |dockerfile: &str, files: Vec<(&'static str, &'static str)>| -> Vec<String> {
        let ctx = FakeContext(files);
        let opts = CheckOptions {
            file_name: "Dockerfile",
            platform: platform(),
            all_stages: true,
            context: Some(&ctx),
            ..Default::default()
        };
        check(dockerfile, &opts, &mut FakeBases)
            .unwrap()
            .warnings
            .iter()
            .filter(|w| w.rule.name == "SecretFileCopied")
            .map(|w| w.message.clone())
            .collect()
    };
    let tail = ": a file copied into a layer stays in the image even if a later step deletes it; use RUN --mount=type=secret";
    let files = vec![
        ("src/app.js", ""),
        ("deploy/id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        (".npmrc", "registry=https://registry.npmjs.org/\n"),
        (".env", "DB_PASSWORD=x\n"),
    ];
    assert_eq!(
        run("FROM alpine\nCOPY . /app\n", files.clone()),
        [format!(
            "\".\" copies \"deploy/id_ed25519\", which looks like an SSH private key and 1 more{tail}"
        )]
    );
    // Excluded files are not copied; an .npmrc without a token is harmless.
    assert_eq!(
        run(
            "FROM alpine\nCOPY --exclude=deploy/id_ed25519 --exclude=.env . /app\nCOPY .npmrc /root/\n",
            files.clone()
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        run(
            "FROM alpine\nCOPY .npmrc /root/\n",
            vec![(".npmrc", "//registry.npmjs.org/:_authToken=npm_abc\n")]
        ),
        [format!("\".npmrc\" looks like a credentials file{tail}")]
    );
    // A source the context does not have copies nothing (the build says so).
    assert_eq!(
        run("FROM alpine\nCOPY id_rsa /root/.ssh/\n", files),
        Vec::<String>::new()
    );
}

/// `ADD ssh://...` clones a repository (exec::git): not a local file the hygiene rule
/// would ask to COPY.
#[test]
fn add_of_an_ssh_git_url_is_remote() {
    let opts = CheckOptions {
        file_name: "Dockerfile",
        platform: platform(),
        all_stages: true,
        ..Default::default()
    };
    for src in [
        "ssh://git@example.com/r.git",
        "git@example.com:r.git",
        "notes.txt",
    ] {
        let fired = check(
            &format!("FROM alpine\nADD {src} /r\n"),
            &opts,
            &mut FakeBases,
        )
        .unwrap()
        .warnings
        .iter()
        .any(|w| w.rule.name == "AddLocalNonArchive");
        assert_eq!(fired, src == "notes.txt", "{src}");
    }
}

/// Every Dockerfile of the parser corpora and the examples: checks either report or return
/// the parse error, never panic (a panic is a bug).
#[test]
fn no_dockerfile_makes_the_checks_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for corpus in ["testdata/parse", "testdata/parse-negative", "testdata/plan"] {
        for case in std::fs::read_dir(root.join(corpus)).unwrap() {
            files.push(case.unwrap().path().join("Dockerfile"));
        }
    }
    for example in std::fs::read_dir(root.join("Dockerfile.examples")).unwrap() {
        let p = example.unwrap().path();
        files.push(if p.is_dir() { p.join("Dockerfile") } else { p });
    }
    let mut checked = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for all_stages in [true, false] {
            let opts = CheckOptions {
                file_name: "Dockerfile",
                platform: platform(),
                all_stages,
                ..Default::default()
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check(&text, &opts, &mut FakeBases).map(|_| ())
            }));
            assert!(result.is_ok(), "checks panicked on {}", file.display());
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} Dockerfiles");
}

/// BuildKit's testRuleCheckOption: the directive, error=true and the build arg that
/// replaces the directive, with the rules reported and the violation.
#[test]
fn buildkit_check_options() {
    let body = "FROM scratch as base\ncopy Dockerfile .\n";
    /// Directive, build arg, rules reported, violation.
    type Case = (
        &'static str,
        Option<&'static str>,
        &'static [&'static str],
        Option<&'static str>,
    );
    let cases: &[Case] = &[
        ("#check=skip=all\n", None, &[], None),
        ("#check=skip=all;error=true\n", None, &[], None),
        (
            "#check=skip=ConsistentInstructionCasing,FromAsCasing;error=true\n",
            None,
            &[],
            None,
        ),
        (
            "#check=skip=ConsistentInstructionCasing\n",
            None,
            &["FromAsCasing"],
            None,
        ),
        (
            "#check=skip=ConsistentInstructionCasing;error=true\n",
            None,
            &["FromAsCasing"],
            Some("lint violation found for rules: FromAsCasing"),
        ),
        (
            "#check=skip=all\n",
            Some("skip=ConsistentInstructionCasing;error=true"),
            &["FromAsCasing"],
            Some("lint violation found for rules: FromAsCasing"),
        ),
        ("#check=error=true\n", Some("skip=all"), &[], None),
        (
            "",
            None,
            &["FromAsCasing", "ConsistentInstructionCasing"],
            None,
        ),
    ];
    for (directive, arg, rules, violation) in cases {
        let mut build_args = BTreeMap::new();
        if let Some(v) = arg {
            build_args.insert(CHECK_BUILD_ARG.to_string(), v.to_string());
        }
        let opts = CheckOptions {
            file_name: "Dockerfile",
            build_args,
            platform: platform(),
            all_stages: true,
            ..Default::default()
        };
        let text = format!("{directive}{body}");
        let report = check(&text, &opts, &mut FakeBases).unwrap();
        let got: Vec<&str> = report.warnings.iter().map(|w| w.rule.name).collect();
        assert_eq!(&got, rules, "{text} {arg:?}");
        assert_eq!(report.violation().as_deref(), *violation, "{text} {arg:?}");
    }
}
