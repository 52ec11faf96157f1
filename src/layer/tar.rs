//! The one tar encoder: layer snapshots, the rootfs output (`type=tar`) and the entries of
//! docker and OCI archives all go through it (design.md "Layers").
//!
//! Headers are filled by hand so the bytes depend only on the entry: ustar headers with
//! numeric uid/gid and empty uname/gname, the full mode (setuid/setgid/sticky included), no
//! atime/ctime, and a PAX extended header before an entry whose name or link target is
//! longer than ustar's 100 bytes, whose size, id or mtime does not fit its octal field, or
//! which carries xattrs (`SCHILY.xattr.NAME`, the names GNU tar and Docker use). Never GNU
//! long-name or sparse entries (OCI image spec, "Layer").

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::layer::LayerError;

/// The tar block size.
pub const BLOCK: usize = 512;
/// The end of an archive: two zero blocks.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// ustar's octal numeric fields hold at most 7 digits (uid/gid) or 11 digits (size/mtime).
const MAX_OCTAL_7: u64 = 0o7777777;
const MAX_OCTAL_11: u64 = 0o77777777777;

/// Xattr name -> value, sorted so the PAX records come out in a fixed order.
pub type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// The xattrs an image carries: file capabilities and user attributes. Overlay's own
/// (`trusted.overlay.*`, and `user.overlay.*` when overlay runs with `userxattr`), SELinux
/// labels and the other trusted/system namespaces describe the host, not the image
/// (design.md "Layers" and "Rootless"). Snapshot, apply and the rootfs outputs share it.
pub(crate) fn keep_xattr(name: &[u8]) -> bool {
    name == b"security.capability"
        || (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
}

/// One tar entry, before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The path in the archive; directories end in `/`.
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    /// Permission bits plus setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since 1970, already clamped as the caller wants it.
    pub mtime: u64,
    /// Bytes of data that follow the header (regular files only).
    pub size: u64,
    /// Symlink target or hard link name.
    pub link: Option<Vec<u8>>,
    /// (major, minor) of a device node.
    pub device: Option<(u32, u32)>,
    pub xattrs: Xattrs,
}

impl Entry {
    /// An entry of `kind` named `name` with mode `mode`; ids, mtime and size 0.
    pub fn new(name: impl Into<Vec<u8>>, kind: tar::EntryType, mode: u32) -> Entry {
        Entry {
            name: name.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link: None,
            device: None,
            xattrs: Xattrs::new(),
        }
    }
}

/// Append the header blocks of `entry` to `out`: a PAX extended header first when one is
/// needed, then the ustar header. The data (for regular files) and its padding follow.
pub fn encode_header(entry: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if entry.name.len() > 100 {
        pax.push((b"path".to_vec(), entry.name.clone()));
    }
    if let Some(link) = &entry.link {
        if link.len() > 100 {
            pax.push((b"linkpath".to_vec(), link.clone()));
        }
    }
    if entry.size > MAX_OCTAL_11 {
        pax.push((b"size".to_vec(), entry.size.to_string().into_bytes()));
    }
    if entry.uid > MAX_OCTAL_7 {
        pax.push((b"uid".to_vec(), entry.uid.to_string().into_bytes()));
    }
    if entry.gid > MAX_OCTAL_7 {
        pax.push((b"gid".to_vec(), entry.gid.to_string().into_bytes()));
    }
    if entry.mtime > MAX_OCTAL_11 {
        pax.push((b"mtime".to_vec(), entry.mtime.to_string().into_bytes()));
    }
    for (name, value) in &entry.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        pax.push((key, value.clone()));
    }
    if !pax.is_empty() {
        let records = pax_records(&pax);
        let mut h = tar::Header::new_ustar();
        set_bytes(&mut ustar(&mut h).name, b"PaxHeader");
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(records.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&records);
        out.extend_from_slice(padding(records.len() as u64));
    }

    let mut h = tar::Header::new_ustar();
    {
        let ustar = ustar(&mut h);
        set_bytes(&mut ustar.name, &entry.name);
        if let Some(link) = &entry.link {
            set_bytes(&mut ustar.linkname, link);
        }
    }
    h.set_entry_type(entry.kind);
    h.set_mode(entry.mode);
    h.set_uid(entry.uid.min(MAX_OCTAL_7));
    h.set_gid(entry.gid.min(MAX_OCTAL_7));
    h.set_mtime(entry.mtime.min(MAX_OCTAL_11));
    h.set_size(entry.size.min(MAX_OCTAL_11));
    // Empty uname/gname: ids are numeric in images.
    let (major, minor) = entry.device.unwrap_or((0, 0));
    h.set_device_major(major)?;
    h.set_device_minor(minor)?;
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    Ok(())
}

fn ustar(h: &mut tar::Header) -> &mut tar::UstarHeader {
    h.as_ustar_mut()
        .expect("Header::new_ustar makes a ustar header")
}

/// The zeros that pad `len` bytes of data to a whole block.
pub fn padding(len: u64) -> &'static [u8] {
    const ZEROS: [u8; BLOCK] = [0; BLOCK];
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 {
        &[]
    } else {
        &ZEROS[..BLOCK - rem]
    }
}

/// Copy as much of `value` as fits into a NUL-padded header field.
fn set_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
}

/// PAX records: `"<len> <key>=<value>\n"` where `<len>` counts the whole record, itself
/// included (POSIX pax, "extended header").
fn pax_records(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in pairs {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// A tar written to a stream, entry by entry (the rootfs output, archive entries). The layer
/// snapshot encodes with [`encode_header`] itself, to read file data straight into its chunks.
pub struct Writer<W: Write> {
    out: W,
    header: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer {
            out,
            header: Vec::with_capacity(3 * BLOCK),
        }
    }

    /// Write `entry` and, for a regular file, exactly `entry.size` bytes of `data`: fewer is
    /// an `UnexpectedEof` error (the file shrank), more are not read.
    pub fn append(&mut self, entry: &Entry, data: impl Read) -> io::Result<()> {
        let size = entry.size;
        self.append_with(entry, |w| io::copy(&mut data.take(size), w))
    }

    /// Write `entry`, then let `copy` write its data (returning how many bytes it wrote),
    /// for data that arrives in chunks. Fewer bytes than `entry.size` is an error.
    pub fn append_with(
        &mut self,
        entry: &Entry,
        copy: impl FnOnce(&mut W) -> io::Result<u64>,
    ) -> io::Result<()> {
        self.header.clear();
        encode_header(entry, &mut self.header)?;
        self.out.write_all(&self.header)?;
        let written = if entry.size > 0 {
            copy(&mut self.out)?
        } else {
            0
        };
        if written != entry.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "`{}`: {written} bytes where {} were expected",
                    String::from_utf8_lossy(&entry.name),
                    entry.size
                ),
            ));
        }
        self.out.write_all(padding(entry.size))
    }

    /// End the archive and flush; returns the stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&END_OF_ARCHIVE)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The xattrs of `path` an image keeps ([`keep_xattr`]), and whether the directory is marked
/// opaque with `opaque_xattr` set to `y` (overlay's marker in the mode it runs in). `file`
/// is `path` opened, if it is: read through it, the path is not walked again.
pub(crate) fn read_xattrs(
    path: &Path,
    file: Option<&std::fs::File>,
    opaque_xattr: &[u8],
) -> Result<(Xattrs, bool), LayerError> {
    let err = |e: rustix::io::Errno| LayerError::io("reading xattrs of", path, e.into());
    let mut kept = BTreeMap::new();
    let mut opaque = false;
    let names = loop {
        let len = match file {
            Some(f) => rustix::fs::flistxattr_query(f),
            None => rustix::fs::llistxattr_query(path),
        };
        let len = match len {
            Ok(len) => len,
            // Filesystems without xattr support have no xattrs to keep.
            Err(rustix::io::Errno::NOTSUP) => return Ok((kept, false)),
            Err(e) => return Err(err(e)),
        };
        if len == 0 {
            return Ok((kept, false));
        }
        let mut buf = vec![0u8; len];
        let listed = match file {
            Some(f) => rustix::fs::flistxattr(f, &mut buf[..]),
            None => rustix::fs::llistxattr(path, &mut buf[..]),
        };
        match listed {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // Grew between the two calls: ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(err(e)),
        }
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let is_opaque = name == opaque_xattr;
        if !is_opaque && !keep_xattr(name) {
            continue;
        }
        let value = match get_xattr(path, file, name) {
            Ok(v) => v,
            // Removed since the listing: nothing to keep.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(err(e)),
        };
        if is_opaque {
            opaque = value == b"y";
        } else {
            kept.insert(name.to_vec(), value);
        }
    }
    Ok((kept, opaque))
}

fn get_xattr(
    path: &Path,
    file: Option<&std::fs::File>,
    name: &[u8],
) -> Result<Vec<u8>, rustix::io::Errno> {
    let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
    loop {
        let len = match file {
            Some(f) => rustix::fs::fgetxattr_query(f, name),
            None => rustix::fs::lgetxattr_query(path, name),
        }?;
        let mut buf = vec![0u8; len];
        let got = match file {
            Some(f) => rustix::fs::fgetxattr(f, name, &mut buf[..]),
            None => rustix::fs::lgetxattr(path, name, &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        // "9 a=bcd\n" is 8 bytes: the length must roll over to two digits correctly.
        assert_eq!(pax_records(&[(b"a".to_vec(), b"b".to_vec())]), b"6 a=b\n");
        let r = pax_records(&[(b"k".to_vec(), vec![b'v'; 5])]);
        assert_eq!(r, b"11 k=vvvvv\n");
    }

    #[test]
    fn one_xattr_rule_keeps_capabilities_and_user_attributes_only() {
        for kept in ["security.capability", "user.mime_type", "user.x"] {
            assert!(keep_xattr(kept.as_bytes()), "{kept}");
        }
        for dropped in [
            "trusted.overlay.opaque",
            "trusted.overlay.origin",
            "user.overlay.opaque",
            "user.overlay.redirect",
            "security.selinux",
            "system.posix_acl_access",
        ] {
            assert!(!keep_xattr(dropped.as_bytes()), "{dropped}");
        }
    }

    /// (name, type, uid, gid, mtime, link, data) as the tar crate reads them.
    type Listed = (String, tar::EntryType, u64, u64, u64, String, Vec<u8>);

    fn entries(bytes: &[u8]) -> Vec<Listed> {
        let mut out = Vec::new();
        let mut archive = tar::Archive::new(bytes);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap())
                .unwrap_or_default();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((
                name,
                h.entry_type(),
                e.header().uid().unwrap(),
                e.header().gid().unwrap(),
                e.header().mtime().unwrap(),
                link,
                data,
            ));
        }
        out
    }

    #[test]
    fn long_names_links_big_ids_and_xattrs_go_into_pax_records() {
        let long = "d/".repeat(60) + "f";
        let mut w = Writer::new(Vec::new());
        let mut file = Entry::new(long.clone(), tar::EntryType::Regular, 0o4755);
        file.size = 3;
        file.uid = 1 << 32;
        file.gid = 70_000_000;
        file.mtime = 1 << 34;
        file.xattrs.insert(b"user.k".to_vec(), b"v\0w".to_vec());
        w.append(&file, &b"abc"[..]).unwrap();
        let mut link = Entry::new("l", tar::EntryType::Symlink, 0o777);
        link.link = Some(long.clone().into_bytes());
        w.append(&link, io::empty()).unwrap();
        let bytes = w.finish().unwrap();
        assert!(bytes.len() % BLOCK == 0 && bytes.ends_with(&END_OF_ARCHIVE));
        assert_eq!(
            entries(&bytes),
            vec![
                (
                    long.clone(),
                    tar::EntryType::Regular,
                    1 << 32,
                    70_000_000,
                    // The header says as much as fits; the PAX record the rest (below).
                    0o77777777777,
                    String::new(),
                    b"abc".to_vec()
                ),
                (
                    "l".to_string(),
                    tar::EntryType::Symlink,
                    0,
                    0,
                    0,
                    long,
                    Vec::new()
                ),
            ]
        );
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut first = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.header().mode().unwrap(), 0o4755);
        let pax: Vec<(String, Vec<u8>)> = first
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_string(), e.value_bytes().to_vec())
            })
            .collect();
        assert!(pax.contains(&("SCHILY.xattr.user.k".to_string(), b"v\0w".to_vec())));
        assert!(pax.contains(&("mtime".to_string(), b"17179869184".to_vec())));
        assert!(pax.contains(&("uid".to_string(), b"4294967296".to_vec())));
        // Numeric ids only: no user or group names.
        assert_eq!(first.header().username_bytes(), Some(&b""[..]));
    }

    #[test]
    fn a_short_file_is_an_error_not_a_corrupt_archive() {
        let mut w = Writer::new(Vec::new());
        let mut file = Entry::new("f", tar::EntryType::Regular, 0o644);
        file.size = 10;
        let err = w.append(&file, &b"abc"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("`f`: 3 bytes where 10"), "{err}");
    }
}
