//! rbuild's own rules for images that carry what they should not or rebuild more than they
//! need: apt's package lists left in a layer, recommended packages, pipes that hide
//! failures, ADD where COPY is meant, the whole context copied before the dependency
//! install, files named like keys copied into a layer. Each has a page in docs/checks/.
//! They read commands as words, not as a shell would: they look for the common spellings
//! (`apt-get update`, `npm ci`) and stay quiet when unsure.

use super::rules::*;
use super::{CheckOptions, Linter, Span};
use crate::dockerfile::instructions::{CommandForm, Copy, Run};
use crate::dockerfile::syntax::Node;

/// What a stage has done so far that a later instruction's rule needs.
#[derive(Default)]
pub(super) struct Stage {
    /// The last `COPY . <dest>` of the build context, with its node's comments.
    copy_all: Option<(Span, Vec<String>)>,
}

impl Stage {
    pub(super) fn copy(
        &mut self,
        lint: &mut Linter,
        node: &Node,
        c: &Copy,
        sources: &[String],
        opts: &CheckOptions,
    ) {
        if c.from.is_some() {
            return;
        }
        for src in sources.iter().filter(|s| !crate::plan::is_remote_source(s)) {
            let name = src.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            secrets(lint, node, src, &c.excludes, opts);
            if c.add && !is_archive(name) && !src.contains(['*', '?', '[']) {
                lint.at(
                    &ADD_LOCAL_NON_ARCHIVE,
                    node,
                    format!("ADD of local \"{src}\", which is not an archive: use COPY"),
                );
            }
            if crate::sandbox::root::clean(src).is_empty() && !c.add {
                self.copy_all = Some((lint.span_of(node), node.comments.clone()));
            }
        }
    }

    pub(super) fn run(
        &mut self,
        lint: &mut Linter,
        node: &Node,
        run: &Run,
        shell: Option<&[String]>,
    ) {
        let (script, shell_form) = match &run.command {
            CommandForm::Shell(s) => (s.clone(), true),
            CommandForm::Exec(words) => (words.join(" "), false),
        };
        let mut text = script.clone();
        for h in &run.heredocs {
            text.push('\n');
            text.push_str(&h.content);
        }
        let commands = simple_commands(&text);

        let updates = commands.iter().any(|c| apt(c) == Some("update"));
        let cached_lists = run.mounts.iter().any(|m| {
            m.target_as_written()
                .is_some_and(|t| t.trim_end_matches('/').starts_with("/var/lib/apt"))
        });
        let removes_lists = commands.iter().any(|c| {
            c.first().is_some_and(|w| w == "rm")
                && c.iter().any(|w| w.starts_with("/var/lib/apt/lists"))
        });
        if updates && !cached_lists && !removes_lists {
            lint.at(
                &APT_LISTS_LEFT,
                node,
                "apt-get update leaves its package lists in this layer: remove them in the same RUN (`&& rm -rf /var/lib/apt/lists/*`)".into(),
            );
        }
        let recommends = commands.iter().any(|c| {
            apt(c) == Some("install")
                && !c
                    .iter()
                    .any(|w| w == "--no-install-recommends" || w.contains("Install-Recommends"))
        });
        if recommends {
            lint.at(
                &APT_NO_INSTALL_RECOMMENDS,
                node,
                "apt-get install without --no-install-recommends also installs the packages it recommends".into(),
            );
        }

        let posix_shell = match shell {
            None => true,
            Some(words) => {
                let sh = words.first().map(|w| w.rsplit('/').next().unwrap_or(w));
                let posix = sh.is_some_and(|s| {
                    matches!(s, "sh" | "bash" | "ash" | "dash" | "zsh" | "ksh" | "mksh")
                });
                posix && !words.iter().any(|w| w.contains("pipefail"))
            }
        };
        if shell_form && posix_shell && has_pipe(&text) && !text.contains("pipefail") {
            lint.at(
                &PIPE_WITHOUT_PIPEFAIL,
                node,
                "RUN uses a pipe without `set -o pipefail`: only the last command's failure fails the step".into(),
            );
        }

        if let Some(install) = commands.iter().find_map(|c| dependency_install(c)) {
            if let Some((span, comments)) = self.copy_all.take() {
                let message = format!(
                    "The whole build context is copied before `{install}` (line {}): any change to the context reruns the install; copy the dependency manifests first",
                    node.start.line
                );
                lint.at_span_with_comments(
                    &COPY_ALL_BEFORE_INSTALL,
                    span,
                    &Node {
                        comments,
                        ..node.clone()
                    },
                    message,
                );
            }
        }
    }
}

/// Local archives ADD extracts: tar, optionally gzip, bzip2, xz or zstd compressed.
fn is_archive(name: &str) -> bool {
    const EXT: [&str; 12] = [
        ".tar",
        ".tar.gz",
        ".tgz",
        ".tar.bz2",
        ".tbz",
        ".tbz2",
        ".tar.xz",
        ".txz",
        ".tar.zst",
        ".tzst",
        ".tar.zstd",
        ".taz",
    ];
    let lower = name.to_lowercase();
    EXT.iter().any(|e| lower.ends_with(e))
}

/// SecretFileCopied for one COPY/ADD source: the files it brings (from the context when
/// there is one, else the name as written) that look like keys or credentials.
fn secrets(lint: &mut Linter, node: &Node, src: &str, excludes: &[String], opts: &CheckOptions) {
    let files = opts
        .context
        .and_then(|ctx| ctx.files(src, excludes))
        .unwrap_or_else(|| vec![src.to_string()]);
    let hits: Vec<(&String, &str)> = files
        .iter()
        .filter_map(|path| {
            let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            let kind = secret_file(name)?;
            // An .npmrc only matters with a token in it (most carry just a registry).
            if name == ".npmrc" {
                if let Some(body) = opts.context.and_then(|ctx| ctx.read(path)) {
                    let body = String::from_utf8_lossy(&body);
                    if !["_authToken", "_auth", "_password"]
                        .iter()
                        .any(|k| body.contains(k))
                    {
                        return None;
                    }
                }
            }
            Some((path, kind))
        })
        .collect();
    let Some((first, kind)) = hits.first() else {
        return;
    };
    let what = if hits.len() == 1 && first.as_str() == src.trim_start_matches("./") {
        format!("\"{src}\" looks like {kind}")
    } else {
        let more = match hits.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        format!("\"{src}\" copies \"{first}\", which looks like {kind}{more}")
    };
    lint.at(
        &SECRET_FILE_COPIED,
        node,
        format!("{what}: a file copied into a layer stays in the image even if a later step deletes it; use RUN --mount=type=secret"),
    );
}

/// What a file name says it holds, when it names a key or credentials.
fn secret_file(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    match lower.as_str() {
        "id_rsa" | "id_dsa" | "id_ecdsa" | "id_ed25519" => Some("an SSH private key"),
        ".env" => Some("an environment file with secrets"),
        ".npmrc" | ".pypirc" | ".netrc" | ".git-credentials" | ".dockercfg" => {
            Some("a credentials file")
        }
        n if n.starts_with(".env.")
            && !matches!(
                n,
                ".env.example" | ".env.sample" | ".env.template" | ".env.dist"
            ) =>
        {
            Some("an environment file with secrets")
        }
        n if n.ends_with(".pem")
            || n.ends_with(".key")
            || n.ends_with(".p12")
            || n.ends_with(".pfx") =>
        {
            Some("a private key or certificate bundle")
        }
        _ => None,
    }
}

/// The simple commands of a script, as words: split at `&&`, `||`, `;`, `|`, `&` and line
/// ends outside quotes; leading `VAR=value` assignments and `sudo` dropped.
fn simple_commands(script: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = script.chars().peekable();
    let end_word = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    if next != '\n' {
                        word.push(next);
                    }
                }
            }
            (None, ';' | '|' | '&' | '\n' | '(' | ')') => {
                end_word(&mut word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            (None, c) if c.is_whitespace() => end_word(&mut word, &mut words),
            (None, c) => word.push(c),
        }
    }
    end_word(&mut word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    for c in &mut commands {
        let skip = c
            .iter()
            .take_while(|w| {
                *w == "sudo" || *w == "env" || (w.contains('=') && !w.starts_with(['-', '=']))
            })
            .count();
        c.drain(..skip);
    }
    commands
}

/// `apt-get`/`apt` with its first non-option word (`update`, `install`, ...).
fn apt(command: &[String]) -> Option<&str> {
    let program = command.first()?.rsplit('/').next()?;
    if program != "apt-get" && program != "apt" {
        return None;
    }
    let mut words = command[1..].iter();
    while let Some(w) = words.next() {
        if w == "-o" || w == "-c" || w == "-t" {
            words.next();
        } else if !w.starts_with('-') {
            return Some(w.as_str());
        }
    }
    None
}

/// The dependency install a command is, as `npm ci`, or None.
fn dependency_install(command: &[String]) -> Option<String> {
    let program = command.first()?.rsplit('/').next()?.to_string();
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let positional: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !a.starts_with('-'))
        .collect();
    let found = match (program.as_str(), positional.as_slice()) {
        ("npm", ["ci", ..]) | ("npm", ["install" | "i"]) => true,
        ("yarn", []) | ("yarn", ["install", ..]) => true,
        ("pnpm", ["install" | "i", ..]) => true,
        ("pip" | "pip3", ["install", rest @ ..]) => {
            args.contains(&"-r")
                || args.iter().any(|a| a.starts_with("--requirement"))
                || rest.contains(&".")
        }
        ("poetry" | "pipenv" | "bundle" | "composer", ["install", ..]) => true,
        ("go", ["mod", "download", ..]) => true,
        ("cargo", ["fetch", ..]) => true,
        _ => false,
    };
    found.then(|| {
        let shown: Vec<&str> = std::iter::once(program.as_str())
            .chain(positional.iter().copied().take(2))
            .collect();
        shown.join(" ")
    })
}

/// A `|` pipe (not `||`) outside quotes.
fn has_pipe(script: &str) -> bool {
    let chars: Vec<char> = script.chars().collect();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\\' => i += 1,
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '|' => {
                if chars.get(i + 1) == Some(&'|') {
                    i += 2;
                    continue;
                }
                return true;
            }
            None => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_split_outside_quotes() {
        let c = simple_commands("DEBIAN_FRONTEND=x sudo apt-get -y update && echo 'a && b'|wc");
        assert_eq!(c[0], ["apt-get", "-y", "update"]);
        assert_eq!(c[1], ["echo", "a && b"]);
        assert_eq!(c[2], ["wc"]);
        assert_eq!(apt(&c[0]), Some("update"));
    }

    #[test]
    fn pipes() {
        assert!(has_pipe("curl x | sh"));
        assert!(!has_pipe("a || b"));
        assert!(!has_pipe("echo 'a | b' \"c|d\""));
    }

    #[test]
    fn installs() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            dependency_install(&words("npm ci")).as_deref(),
            Some("npm ci")
        );
        assert_eq!(
            dependency_install(&words("npm install -g typescript")),
            None
        );
        assert!(dependency_install(&words("pip install -r requirements.txt")).is_some());
        assert!(dependency_install(&words("pip install flask")).is_none());
        assert!(dependency_install(&words("go mod download")).is_some());
    }

    #[test]
    fn names() {
        assert!(secret_file("id_rsa").is_some());
        assert!(secret_file("id_rsa.pub").is_none());
        assert!(secret_file(".env.production").is_some());
        assert!(secret_file(".env.example").is_none());
        assert!(is_archive("app.TAR.GZ"));
        assert!(!is_archive("app.zip"));
    }
}
