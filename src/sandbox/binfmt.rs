//! Foreign architectures: a RUN for `linux/arm64` on an amd64 host runs the image's own
//! binaries, which the kernel hands to qemu-user through a binfmt_misc handler. A handler
//! must have the F flag (the interpreter opened when it is registered), or the interpreter's
//! path would be looked up inside the container's root, where it is not. This module tells
//! whether a platform can run here and registers Debian's qemu-user-static handlers.

use std::path::{Path, PathBuf};

use crate::image::Platform;

/// Where the kernel lists the handlers.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
/// Where Debian's qemu-user-static puts its handler definitions (systemd's binfmt.d format).
const BINFMT_D: &str = "/usr/lib/binfmt.d";
/// Test-only: look for handlers in this directory instead of [`BINFMT_DIR`], so a test can
/// see the no-handler error without unregistering the machine's handlers.
const DIR_VAR: &str = "RBUILD_TEST_BINFMT_DIR";

/// Why a platform cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error("rbuild cannot run binaries of {platform}: no ELF machine is known for `{arch}`")]
    UnknownArch { platform: String, arch: String },
    #[error(
        "no binfmt_misc handler runs {platform} binaries ({qemu} ELF) on this {host} host: \
         install qemu-user-static and register its handlers (as root: `rbuild binfmt --install`, \
         or `cat {BINFMT_D}/qemu-{qemu}.conf > {BINFMT_DIR}/register`)"
    )]
    NoHandler {
        platform: String,
        qemu: &'static str,
        host: String,
    },
    #[error(
        "the binfmt_misc handler `{name}` runs {platform} binaries but lacks the F flag, so its \
         interpreter is not found inside a build's root: register it again with flags F \
         (`rbuild binfmt --install` does, as root, after `echo -1 > {BINFMT_DIR}/{name}`)"
    )]
    NoFixBinary { platform: String, name: String },
    #[error("{what} `{path}`: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The first 20 bytes of an executable for `arch`: class, byte order, type and machine,
/// what a handler's magic and mask are matched against; and qemu's name for the arch.
fn elf_header(arch: &str) -> Option<([u8; 20], &'static str)> {
    // (qemu name, 64-bit, big-endian, e_machine)
    let (qemu, wide, big, machine): (&str, bool, bool, u16) = match arch {
        "amd64" => ("x86_64", true, false, 62),
        "386" => ("i386", false, false, 3),
        "arm64" => ("aarch64", true, false, 183),
        "arm" => ("arm", false, false, 40),
        "ppc64le" => ("ppc64le", true, false, 21),
        "s390x" => ("s390x", true, true, 22),
        "riscv64" => ("riscv64", true, false, 243),
        "mips64le" => ("mips64el", true, false, 8),
        "loong64" => ("loongarch64", true, false, 258),
        _ => return None,
    };
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if wide { 2 } else { 1 };
    h[5] = if big { 2 } else { 1 };
    h[6] = 1; // EI_VERSION
    let (ty, m) = if big {
        (2u16.to_be_bytes(), machine.to_be_bytes())
    } else {
        (2u16.to_le_bytes(), machine.to_le_bytes())
    };
    h[16..18].copy_from_slice(&ty);
    h[18..20].copy_from_slice(&m);
    Some((h, qemu))
}

/// Whether the host runs `platform`'s binaries itself (its own arch; 386 on amd64, arm on
/// arm64 as the CPU allows).
pub fn native(platform: &Platform) -> bool {
    let host = Platform::host();
    platform.os == host.os
        && (platform.architecture == host.architecture
            || matches!(
                (host.architecture.as_str(), platform.architecture.as_str()),
                ("amd64", "386")
            ))
}

/// One registered handler, as its file under binfmt_misc reads.
#[derive(Debug, Default)]
struct Handler {
    name: String,
    enabled: bool,
    flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Vec<u8>,
}

impl Handler {
    fn parse(name: &str, text: &str) -> Option<Handler> {
        let mut h = Handler {
            name: name.to_string(),
            ..Handler::default()
        };
        for line in text.lines() {
            match line.split_once(' ') {
                _ if line == "enabled" => h.enabled = true,
                Some(("flags:", f)) => h.flags = f.trim().to_string(),
                Some(("offset", n)) => h.offset = n.trim().parse().ok()?,
                Some(("magic", m)) => h.magic = hex::decode(m.trim()).ok()?,
                Some(("mask", m)) => h.mask = hex::decode(m.trim()).ok()?,
                _ => {}
            }
        }
        // Extension handlers (`E`) have no magic: they never match an ELF header.
        (!h.magic.is_empty()).then_some(h)
    }

    fn matches(&self, header: &[u8]) -> bool {
        self.magic.iter().enumerate().all(|(i, m)| {
            let mask = self.mask.get(i).copied().unwrap_or(0xff);
            header
                .get(self.offset + i)
                .is_some_and(|b| b & mask == m & mask)
        })
    }
}

fn handlers_dir() -> PathBuf {
    std::env::var_os(DIR_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BINFMT_DIR))
}

fn handlers(dir: &Path) -> Vec<Handler> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Handler> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "register" || name == "status" {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            Handler::parse(&name, &text)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Ok when a RUN step of `platform` can run here: natively, or through an enabled handler
/// with the F flag.
pub fn check(platform: &Platform) -> Result<(), BinfmtError> {
    if native(platform) {
        return Ok(());
    }
    let spec = platform.to_spec();
    let (header, qemu) = elf_header(&platform.architecture).ok_or(BinfmtError::UnknownArch {
        platform: spec.clone(),
        arch: platform.architecture.clone(),
    })?;
    let dir = handlers_dir();
    let dir_enabled = std::fs::read_to_string(dir.join("status"))
        .map(|s| s.trim() == "enabled")
        .unwrap_or(false);
    let found: Vec<Handler> = handlers(&dir)
        .into_iter()
        .filter(|h| dir_enabled && h.enabled && h.matches(&header))
        .collect();
    match found.iter().find(|h| h.flags.contains('F')) {
        Some(_) => Ok(()),
        None => match found.into_iter().next() {
            Some(h) => Err(BinfmtError::NoFixBinary {
                platform: spec,
                name: h.name,
            }),
            None => Err(BinfmtError::NoHandler {
                platform: spec,
                qemu,
                host: Platform::host().to_spec(),
            }),
        },
    }
}

/// `rbuild binfmt --install`: mount binfmt_misc if needed and register every handler of
/// /usr/lib/binfmt.d/qemu-*.conf that is not registered yet. Returns the names registered.
pub fn install() -> Result<Vec<String>, BinfmtError> {
    let dir = Path::new(BINFMT_DIR);
    let register = dir.join("register");
    if !register.exists() {
        nix::mount::mount(
            Some("binfmt_misc"),
            dir,
            Some("binfmt_misc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| BinfmtError::Io {
            what: "mounting binfmt_misc on",
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
    }
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BinfmtError::Io { what, path, source }
    };
    let mut confs: Vec<PathBuf> = std::fs::read_dir(BINFMT_D)
        .map_err(io("reading", Path::new(BINFMT_D)))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("qemu-") && n.ends_with(".conf"))
        })
        .collect();
    confs.sort();
    let mut done = Vec::new();
    for conf in confs {
        let line = std::fs::read_to_string(&conf).map_err(io("reading", &conf))?;
        let line = line
            .lines()
            .find(|l| l.starts_with(':'))
            .unwrap_or_default();
        // `:NAME:TYPE:OFFSET:MAGIC:MASK:INTERPRETER:FLAGS`
        let fields: Vec<&str> = line.split(':').collect();
        let Some(name) = fields.get(1).filter(|n| !n.is_empty()) else {
            continue;
        };
        if dir.join(name).exists() || !Path::new(fields.get(6).unwrap_or(&"")).exists() {
            continue;
        }
        std::fs::write(&register, line).map_err(io("registering a handler through", &register))?;
        done.push(name.to_string());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
        flags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn debian_handlers_match_their_arch_only() {
        let h = Handler::parse("qemu-aarch64", AARCH64).unwrap();
        assert!(h.matches(&elf_header("arm64").unwrap().0));
        assert!(!h.matches(&elf_header("arm").unwrap().0));
        assert!(!h.matches(&elf_header("amd64").unwrap().0));
        assert_eq!(h.flags, "PF");
        let arm = "enabled\nflags: PF\noffset 0\n\
            magic 7f454c4601010100000000000000000002002800\n\
            mask ffffffffffffff00fffffffffffffffffeffffff\n";
        let h = Handler::parse("qemu-arm", arm).unwrap();
        assert!(h.matches(&elf_header("arm").unwrap().0));
        assert!(!h.matches(&elf_header("arm64").unwrap().0));
    }

    #[test]
    fn extension_handlers_are_skipped() {
        assert!(Handler::parse("python3.11", "enabled\nflags: \nextension .pyc\n").is_none());
    }
}
