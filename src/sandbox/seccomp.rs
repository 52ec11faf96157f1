//! The seccomp filter every RUN step runs under.
//!
//! Docker's default profile (moby profiles/seccomp/default.json, which BuildKit's steps get
//! through containerd) is an allow-list whose effect, for a step with Docker's default
//! capabilities, is to refuse the calls below with EPERM. rbuild writes that effect as a
//! deny-list: the same calls refused, everything else allowed. Most of them need a
//! capability the step does not have anyway; the filter is what stops the ones that do
//! not: the kernel keyring (`keyctl`, `add_key`, `request_key` reach the host root's keys,
//! because keyrings are per uid, not per container), new user namespaces (`unshare` or
//! `clone` with a namespace flag; inside one a process holds every capability again),
//! `bpf`, `userfaultfd`, `perf_event_open`, `io_uring_*`, `syslog` (the host's kernel log)
//! and `open_by_handle_at` (the "shocker" escape).
//!
//! - `clone3` answers ENOSYS, as in Docker's profile: its flags sit in a struct that a
//!   filter cannot read, and ENOSYS makes glibc fall back to `clone`, whose flags it can.
//! - 32-bit x86 calls (`int 0x80`) reach the kernel as another ABI with other numbers; they
//!   get the same rules from their own table. The x32 ABI and any other ABI get ENOSYS.
//! - fsync and its kin return 0 without flushing (see [`SYNCS`]): a speed measure, not a
//!   security one, folded into the same filter so a step pays for one.
//!
//! A classic BPF program, built by [`program`] and installed by [`install`] after every
//! mount and before the capabilities are dropped (installing without `no_new_privs` needs
//! CAP_SYS_ADMIN; `no_new_privs` would break setuid programs in the step).

/// `struct seccomp_data` offsets (linux/seccomp.h).
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of `args[0]` (little-endian; the namespace flags all live there).
const ARG0_LOW: u32 = 16;

/// linux/audit.h.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// x32 calls come in as AUDIT_ARCH_X86_64 with this bit set in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: Docker's mask for
/// `clone`. `unshare` also takes CLONE_NEWTIME (0x80).
const CLONE_NAMESPACES: u32 = 0x7e02_0000;
const UNSHARE_NAMESPACES: u32 = CLONE_NAMESPACES | 0x80;

/// One ABI's numbers. Checked against libc and the kernel headers in the tests below.
pub(crate) struct Table {
    pub arch: u32,
    /// Refused with EPERM.
    pub deny: &'static [(&'static str, u32)],
    pub clone: u32,
    pub clone3: u32,
    pub unshare: u32,
    /// Answered with 0 without running.
    pub syncs: &'static [(&'static str, u32)],
}

/// x86_64 (arch/x86/entry/syscalls/syscall_64.tbl).
pub(crate) const X86_64: Table = Table {
    arch: AUDIT_ARCH_X86_64,
    deny: &[
        ("syslog", 103),
        ("uselib", 134),
        ("ustat", 136),
        ("sysfs", 139),
        ("vhangup", 153),
        ("pivot_root", 155),
        ("_sysctl", 156),
        ("acct", 163),
        ("settimeofday", 164),
        ("mount", 165),
        ("umount2", 166),
        ("swapon", 167),
        ("swapoff", 168),
        ("reboot", 169),
        ("iopl", 172),
        ("ioperm", 173),
        ("init_module", 175),
        ("delete_module", 176),
        ("quotactl", 179),
        ("nfsservctl", 180),
        ("lookup_dcookie", 212),
        ("clock_settime", 227),
        ("mbind", 237),
        ("set_mempolicy", 238),
        ("get_mempolicy", 239),
        ("kexec_load", 246),
        ("add_key", 248),
        ("request_key", 249),
        ("keyctl", 250),
        ("move_pages", 279),
        ("perf_event_open", 298),
        ("fanotify_init", 300),
        ("name_to_handle_at", 303),
        ("open_by_handle_at", 304),
        ("clock_adjtime", 305),
        ("setns", 308),
        ("kcmp", 312),
        ("finit_module", 313),
        ("kexec_file_load", 320),
        ("bpf", 321),
        ("userfaultfd", 323),
        ("io_uring_setup", 425),
        ("io_uring_enter", 426),
        ("io_uring_register", 427),
        ("open_tree", 428),
        ("move_mount", 429),
        ("fsopen", 430),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fspick", 433),
        ("mount_setattr", 442),
        ("quotactl_fd", 443),
    ],
    clone: 56,
    clone3: 435,
    unshare: 272,
    syncs: &[
        ("fsync", 74),
        ("fdatasync", 75),
        ("sync", 162),
        ("sync_file_range", 277),
        ("syncfs", 306),
    ],
};

/// i386, as a 64-bit kernel sees `int 0x80` (arch/x86/entry/syscalls/syscall_32.tbl).
pub(crate) const I386: Table = Table {
    arch: AUDIT_ARCH_I386,
    deny: &[
        ("mount", 21),
        ("umount", 22),
        ("stime", 25),
        ("acct", 51),
        ("umount2", 52),
        ("ustat", 62),
        ("settimeofday", 79),
        ("uselib", 86),
        ("swapon", 87),
        ("reboot", 88),
        ("ioperm", 101),
        ("syslog", 103),
        ("iopl", 110),
        ("vhangup", 111),
        ("vm86old", 113),
        ("swapoff", 115),
        ("create_module", 127),
        ("init_module", 128),
        ("delete_module", 129),
        ("get_kernel_syms", 130),
        ("quotactl", 131),
        ("sysfs", 135),
        ("_sysctl", 149),
        ("vm86", 166),
        ("query_module", 167),
        ("nfsservctl", 169),
        ("pivot_root", 217),
        ("lookup_dcookie", 253),
        ("clock_settime", 264),
        ("mbind", 274),
        ("get_mempolicy", 275),
        ("set_mempolicy", 276),
        ("kexec_load", 283),
        ("add_key", 286),
        ("request_key", 287),
        ("keyctl", 288),
        ("move_pages", 317),
        ("perf_event_open", 336),
        ("fanotify_init", 338),
        ("name_to_handle_at", 341),
        ("open_by_handle_at", 342),
        ("clock_adjtime", 343),
        ("setns", 346),
        ("kcmp", 349),
        ("finit_module", 350),
        ("bpf", 357),
        ("userfaultfd", 374),
        ("io_uring_setup", 425),
        ("io_uring_enter", 426),
        ("io_uring_register", 427),
        ("open_tree", 428),
        ("move_mount", 429),
        ("fsopen", 430),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fspick", 433),
        ("mount_setattr", 442),
        ("quotactl_fd", 443),
    ],
    clone: 120,
    clone3: 435,
    unshare: 310,
    syncs: &[
        ("sync", 36),
        ("fsync", 118),
        ("fdatasync", 148),
        ("sync_file_range", 314),
        ("syncfs", 344),
    ],
};

/// aarch64 (include/uapi/asm-generic/unistd.h).
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) const AARCH64: Table = Table {
    arch: AUDIT_ARCH_AARCH64,
    deny: &[
        ("lookup_dcookie", 18),
        ("umount2", 39),
        ("mount", 40),
        ("pivot_root", 41),
        ("nfsservctl", 42),
        ("vhangup", 58),
        ("quotactl", 60),
        ("acct", 89),
        ("kexec_load", 104),
        ("init_module", 105),
        ("delete_module", 106),
        ("clock_settime", 112),
        ("syslog", 116),
        ("reboot", 142),
        ("settimeofday", 170),
        ("add_key", 217),
        ("request_key", 218),
        ("keyctl", 219),
        ("swapon", 224),
        ("swapoff", 225),
        ("mbind", 235),
        ("get_mempolicy", 236),
        ("set_mempolicy", 237),
        ("move_pages", 239),
        ("perf_event_open", 241),
        ("fanotify_init", 262),
        ("name_to_handle_at", 264),
        ("open_by_handle_at", 265),
        ("clock_adjtime", 266),
        ("setns", 268),
        ("kcmp", 272),
        ("finit_module", 273),
        ("bpf", 280),
        ("userfaultfd", 282),
        ("kexec_file_load", 294),
        ("io_uring_setup", 425),
        ("io_uring_enter", 426),
        ("io_uring_register", 427),
        ("open_tree", 428),
        ("move_mount", 429),
        ("fsopen", 430),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fspick", 433),
        ("mount_setattr", 442),
        ("quotactl_fd", 443),
    ],
    clone: 220,
    clone3: 435,
    unshare: 97,
    syncs: &[
        ("sync", 81),
        ("fsync", 82),
        ("fdatasync", 83),
        ("sync_file_range", 84),
        ("syncfs", 267),
    ],
};

/// The native table and any compat ABI that gets the same rules.
#[cfg(target_arch = "x86_64")]
const ABIS: &[&Table] = &[&X86_64, &I386];
#[cfg(target_arch = "aarch64")]
const ABIS: &[&Table] = &[&AARCH64];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ABIS: &[&Table] = &[];

pub(crate) const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
const RET_ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

pub(crate) fn ret_errno(errno: u32) -> u32 {
    RET_ERRNO | errno
}

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// A jump target: the next instruction or a label.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum To {
    Next,
    Label(Label),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Abi(usize),
    Clone,
    Unshare,
    Allow,
    Eperm,
    Enosys,
    Zero,
}

/// A program with symbolic jump targets, resolved into `sock_filter`s by [`Asm::finish`].
#[derive(Default)]
struct Asm {
    code: Vec<(u16, To, To, u32)>,
    labels: Vec<(Label, usize)>,
}

impl Asm {
    fn label(&mut self, l: Label) {
        self.labels.push((l, self.code.len()));
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push((code, To::Next, To::Next, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.code.push((code, jt, jf, k));
    }
    fn finish(self) -> Vec<libc::sock_filter> {
        let target = |at: usize, to: To| -> u8 {
            let dest = match to {
                To::Next => return 0,
                To::Label(l) => {
                    self.labels
                        .iter()
                        .find(|(m, _)| *m == l)
                        .expect("every label is placed")
                        .1
                }
            };
            // Classic BPF jumps forward only, by at most 255.
            u8::try_from(dest - (at + 1)).expect("a seccomp jump fits in 255 instructions")
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| libc::sock_filter {
                code,
                jt: target(i, jt),
                jf: target(i, jf),
                k,
            })
            .collect()
    }
}

/// The filter for the ABIs in `abis`; the first one is the native ABI (x32 is refused there).
pub(crate) fn program(abis: &[&Table]) -> Vec<libc::sock_filter> {
    use Label::*;
    let mut a = Asm::default();
    a.stmt(LD_W_ABS, ARCH);
    for (i, t) in abis.iter().enumerate() {
        a.jump(JEQ_K, t.arch, To::Label(Abi(i)), To::Next);
    }
    a.stmt(RET_K, ret_errno(ENOSYS));
    for (i, t) in abis.iter().enumerate() {
        a.label(Abi(i));
        a.stmt(LD_W_ABS, NR);
        if i == 0 && t.arch == AUDIT_ARCH_X86_64 {
            a.jump(JGE_K, X32_SYSCALL_BIT, To::Label(Enosys), To::Next);
        }
        for &(_, nr) in t.deny {
            a.jump(JEQ_K, nr, To::Label(Eperm), To::Next);
        }
        a.jump(JEQ_K, t.clone, To::Label(Clone), To::Next);
        a.jump(JEQ_K, t.unshare, To::Label(Unshare), To::Next);
        a.jump(JEQ_K, t.clone3, To::Label(Enosys), To::Next);
        for &(_, nr) in t.syncs {
            a.jump(JEQ_K, nr, To::Label(Zero), To::Next);
        }
        a.stmt(RET_K, RET_ALLOW);
    }
    a.label(Clone);
    a.stmt(LD_W_ABS, ARG0_LOW);
    a.jump(JSET_K, CLONE_NAMESPACES, To::Label(Eperm), To::Label(Allow));
    a.label(Unshare);
    a.stmt(LD_W_ABS, ARG0_LOW);
    a.jump(
        JSET_K,
        UNSHARE_NAMESPACES,
        To::Label(Eperm),
        To::Label(Allow),
    );
    a.label(Allow);
    a.stmt(RET_K, RET_ALLOW);
    a.label(Eperm);
    a.stmt(RET_K, ret_errno(EPERM));
    a.label(Enosys);
    a.stmt(RET_K, ret_errno(ENOSYS));
    a.label(Zero);
    a.stmt(RET_K, ret_errno(0));
    a.finish()
}

/// Installs the filter on the calling thread; it is inherited by every child and kept
/// across execve.
pub fn install() -> Result<(), String> {
    if ABIS.is_empty() {
        return Err("rbuild has no seccomp filter for this architecture".into());
    }
    let filter = program(ABIS);
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).expect("the filter is short"),
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(format!(
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF program the way the kernel does, for the opcodes it uses.
    fn eval(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            let k = i.k;
            match i.code {
                LD_W_ABS => {
                    acc = u32::from_le_bytes(data[k as usize..k as usize + 4].try_into().unwrap())
                }
                RET_K => return k,
                JEQ_K | JGE_K | JSET_K => {
                    let hit = match i.code {
                        JEQ_K => acc == k,
                        JGE_K => acc >= k,
                        _ => acc & k != 0,
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_refuses_what_dockers_profile_refuses() {
        for abis in [&[&X86_64, &I386][..], &[&AARCH64][..]] {
            let prog = program(abis);
            for t in abis {
                let run = |nr: u32, arg0: u64| eval(&prog, t.arch, nr, arg0);
                for &(name, nr) in t.deny {
                    assert_eq!(run(nr, 0), ret_errno(EPERM), "{name} on {:#x}", t.arch);
                }
                for &(name, nr) in t.syncs {
                    assert_eq!(run(nr, 0), ret_errno(0), "{name}");
                }
                // fork()-like clone and unshare(CLONE_FS) pass; any namespace flag does not.
                assert_eq!(run(t.clone, 17), RET_ALLOW);
                assert_eq!(run(t.unshare, 0x200), RET_ALLOW);
                for flag in [0x1000_0000u64, 0x2000_0000, 0x4000_0000, 0x0002_0000] {
                    assert_eq!(run(t.clone, flag | 17), ret_errno(EPERM));
                    assert_eq!(run(t.unshare, flag), ret_errno(EPERM));
                }
                assert_eq!(run(t.unshare, 0x80), ret_errno(EPERM)); // CLONE_NEWTIME
                assert_eq!(run(t.clone3, 0), ret_errno(ENOSYS));
                // Ordinary calls pass: read, write, openat, execve on each ABI.
                let ordinary: &[u32] = match t.arch {
                    AUDIT_ARCH_X86_64 => &[0, 1, 257, 59],
                    AUDIT_ARCH_I386 => &[3, 4, 295, 11],
                    _ => &[63, 64, 56, 221],
                };
                for &nr in ordinary {
                    assert_eq!(run(nr, 0), RET_ALLOW, "nr {nr} on {:#x}", t.arch);
                }
            }
            // Unknown ABIs (arm32 on arm64, or anything else) are refused.
            assert_eq!(eval(&prog, 0x4000_0028, 3, 0), ret_errno(ENOSYS));
        }
        let prog = program(&[&X86_64, &I386]);
        // x32: keyctl with the x32 bit.
        assert_eq!(
            eval(&prog, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 250, 0),
            ret_errno(ENOSYS)
        );
    }

    /// The tables' numbers are the kernel's: x86_64 against libc's constants, i386 against the
    /// kernel headers when the machine has them (linux-libc-dev).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_tables_match_the_kernel() {
        let libc_nr = |name: &str| -> Option<i64> {
            Some(match name {
                "syslog" => libc::SYS_syslog,
                "uselib" => libc::SYS_uselib,
                "ustat" => libc::SYS_ustat,
                "sysfs" => libc::SYS_sysfs,
                "vhangup" => libc::SYS_vhangup,
                "pivot_root" => libc::SYS_pivot_root,
                "_sysctl" => libc::SYS__sysctl,
                "acct" => libc::SYS_acct,
                "settimeofday" => libc::SYS_settimeofday,
                "mount" => libc::SYS_mount,
                "umount2" => libc::SYS_umount2,
                "swapon" => libc::SYS_swapon,
                "swapoff" => libc::SYS_swapoff,
                "reboot" => libc::SYS_reboot,
                "iopl" => libc::SYS_iopl,
                "ioperm" => libc::SYS_ioperm,
                "init_module" => libc::SYS_init_module,
                "delete_module" => libc::SYS_delete_module,
                "quotactl" => libc::SYS_quotactl,
                "nfsservctl" => libc::SYS_nfsservctl,
                "lookup_dcookie" => libc::SYS_lookup_dcookie,
                "clock_settime" => libc::SYS_clock_settime,
                "mbind" => libc::SYS_mbind,
                "set_mempolicy" => libc::SYS_set_mempolicy,
                "get_mempolicy" => libc::SYS_get_mempolicy,
                "kexec_load" => libc::SYS_kexec_load,
                "add_key" => libc::SYS_add_key,
                "request_key" => libc::SYS_request_key,
                "keyctl" => libc::SYS_keyctl,
                "move_pages" => libc::SYS_move_pages,
                "perf_event_open" => libc::SYS_perf_event_open,
                "fanotify_init" => libc::SYS_fanotify_init,
                "name_to_handle_at" => libc::SYS_name_to_handle_at,
                "open_by_handle_at" => libc::SYS_open_by_handle_at,
                "clock_adjtime" => libc::SYS_clock_adjtime,
                "setns" => libc::SYS_setns,
                "kcmp" => libc::SYS_kcmp,
                "finit_module" => libc::SYS_finit_module,
                "kexec_file_load" => libc::SYS_kexec_file_load,
                "bpf" => libc::SYS_bpf,
                "userfaultfd" => libc::SYS_userfaultfd,
                "io_uring_setup" => libc::SYS_io_uring_setup,
                "io_uring_enter" => libc::SYS_io_uring_enter,
                "io_uring_register" => libc::SYS_io_uring_register,
                "open_tree" => libc::SYS_open_tree,
                "move_mount" => libc::SYS_move_mount,
                "fsopen" => libc::SYS_fsopen,
                "fsconfig" => libc::SYS_fsconfig,
                "fsmount" => libc::SYS_fsmount,
                "fspick" => libc::SYS_fspick,
                "mount_setattr" => 442,
                "quotactl_fd" => 443,
                "fsync" => libc::SYS_fsync,
                "fdatasync" => libc::SYS_fdatasync,
                "sync" => libc::SYS_sync,
                "sync_file_range" => libc::SYS_sync_file_range,
                "syncfs" => libc::SYS_syncfs,
                _ => return None,
            })
        };
        for &(name, nr) in X86_64.deny.iter().chain(X86_64.syncs) {
            assert_eq!(libc_nr(name), Some(nr as i64), "{name}");
        }
        assert_eq!(X86_64.clone as i64, libc::SYS_clone);
        assert_eq!(X86_64.clone3 as i64, libc::SYS_clone3);
        assert_eq!(X86_64.unshare as i64, libc::SYS_unshare);

        let header = "/usr/include/x86_64-linux-gnu/asm/unistd_32.h";
        let text = std::fs::read_to_string(header).unwrap_or_default();
        if !crate::layer::testutil::require(!text.is_empty(), "kernel headers (linux-libc-dev)") {
            return;
        }
        let kernel = |name: &str| -> Option<u32> {
            text.lines().find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define") && w.next() == Some(&format!("__NR_{name}")))
                    .then(|| w.next()?.parse().ok())
                    .flatten()
            })
        };
        for &(name, nr) in I386.deny.iter().chain(I386.syncs) {
            assert_eq!(kernel(name), Some(nr), "{name}");
        }
        assert_eq!(kernel("clone"), Some(I386.clone));
        assert_eq!(kernel("clone3"), Some(I386.clone3));
        assert_eq!(kernel("unshare"), Some(I386.unshare));
    }
}
