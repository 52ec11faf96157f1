//! The helper's network files and loopback: /etc/hosts, /etc/resolv.conf, `lo` up.

use std::os::fd::{AsRawFd, OwnedFd};

use super::super::{Failure, Network};

use super::Res;

/// BuildKit's /etc/hosts (executor/oci/hosts.go), with the step's hostname, then one
/// `ADDRESS<tab>NAME` line per `--add-host`, in the order given.
pub(super) fn hosts_file(hostname: &str, extra: &[(String, String)]) -> String {
    let mut out =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, address) in extra {
        out.push_str(&format!("{address}\t{name}\n"));
    }
    out
}

/// The host's resolv.conf as the step's network can use it. Its loopback nameservers
/// (systemd-resolved's 127.0.0.53) are the host's own: in the isolated network they become
/// slirp4netns's resolver, which forwards to the host's; with no network they go, and
/// Google's public servers stand in when none remain (BuildKit's executor/oci/resolvconf.go).
pub fn resolv_conf(host: &str, network: Network) -> String {
    let loopback = |line: &str| {
        let mut w = line.split_whitespace();
        w.next() == Some("nameserver")
            && w.next().is_some_and(|ip| {
                ip.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            })
    };
    let relay = format!("nameserver {}", super::super::net::DNS);
    let mut out = String::new();
    for line in host.lines() {
        let line = match network {
            Network::Isolated if loopback(line) => relay.as_str(),
            Network::None if loopback(line) => continue,
            _ => line,
        };
        if !out.lines().any(|l| l == line) || !line.starts_with("nameserver") {
            out.push_str(line);
            out.push('\n');
        }
    }
    let has_nameserver = out
        .lines()
        .any(|l| l.split_whitespace().next() == Some("nameserver"));
    if !has_nameserver {
        match network {
            Network::Isolated => out.push_str(&format!("{relay}\n")),
            _ => out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
        }
    }
    out
}

pub(super) fn loopback_up() -> Res<()> {
    // SAFETY: socket(2) takes no pointers; the result is checked before wrapping it.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Failure::Setup(format!(
            "opening a socket to configure lo: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own; the union field
    // is the one these ioctls use.
    let r = unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req)
        }
    };
    if r < 0 {
        return Err(Failure::Setup(format!(
            "bringing up lo: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
