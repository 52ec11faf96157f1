//! What the attack tests build: C sources compiled on the host and put into a step.

use std::process::Command;

use super::run;

/// Compiles C `source` with the host's gcc; `flags` as gcc takes them (`-static`,
/// `-shared -fPIC`).
pub fn cc(source: &str, flags: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("a.c"), dir.path().join("a.out"));
    std::fs::write(&src, source).unwrap();
    let o = run(Command::new("gcc")
        .args(["-O1", "-w", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags));
    assert!(
        o.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

/// An `LD_PRELOAD` library that, in the first process of the image that loads it, tries to
/// change the executable its /proc/self/exe names (runc's CVE-2019-5736) and writes what
/// each attempt returned (0 or errno) to /evil-report.
pub const EVIL_SO: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static FILE *out;
static void report(const char *what, int r) { fprintf(out, "%s=%d\n", what, r == 0 ? 0 : errno); }

/* Runs inside any process of the image that loads it: the attack is meant for the one
   whose /proc/self/exe is the builder's own binary. */
__attribute__((constructor)) static void attack(void) {
    /* Once: later processes of the image load it too. */
    out = fopen("/evil-report", "wx");
    if (!out) _exit(3);
    char exe[4096] = {0};
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    fprintf(out, "exe=%s\n", exe);
    int fd = open("/proc/self/exe", O_RDONLY);
    report("open_rdonly", fd < 0);
    report("fchmod", fchmod(fd, 04755));
    report("fchown", fchown(fd, 1000, 1000));
    static const unsigned char cap[20] = {0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
                                          0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
    report("fsetxattr", fsetxattr(fd, "security.capability", cap, sizeof cap, 0));
    report("futimens", futimens(fd, NULL));
    int w = open("/proc/self/exe", O_WRONLY);
    report("open_wronly", w < 0);
    report("chmod_path", chmod("/proc/self/exe", 04755));
    fclose(out);
    _exit(0);
}
"#;

/// [`EVIL_SO`]'s report (`what=errno` lines) from a process whose executable is a read-only
/// view: it could open the file, and every change failed with EROFS (a write open may meet
/// ETXTBSY first: a running executable refuses writers before the mount is asked).
pub fn assert_every_change_refused(report: &str) {
    let results: std::collections::BTreeMap<&str, &str> =
        report.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(results.get("open_rdonly"), Some(&"0"), "{report}");
    let erofs = libc::EROFS.to_string();
    for attack in ["fchmod", "fchown", "fsetxattr", "futimens", "chmod_path"] {
        assert_eq!(
            results.get(attack),
            Some(&erofs.as_str()),
            "{attack}: {report}"
        );
    }
    let etxtbsy = libc::ETXTBSY.to_string();
    let wronly = results.get("open_wronly").map(|s| s.to_string());
    assert!([Some(erofs), Some(etxtbsy)].contains(&wronly), "{report}");
}
