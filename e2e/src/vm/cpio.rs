//! A minimal writer for the cpio "newc" format the kernel unpacks as an initramfs.
//!
//! Entries are kept in a sorted map, so parent folders always precede their contents; the
//! folders of every added path are created automatically. Device nodes can be written without
//! privileges (the kernel creates them while unpacking).

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// An in-memory initramfs tree.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.entries.entry(acc.clone()).or_insert(Node::Dir);
        }
    }

    /// Adds a folder (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = clean(path);
        self.parents(&path);
        self.entries.insert(path, Node::Dir);
    }

    /// Adds (or replaces) a regular file.
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        let path = clean(path);
        self.parents(&path);
        self.entries.insert(path, Node::File { data, mode });
    }

    /// Adds a symbolic link unless something already exists at `path`.
    pub fn symlink_if_absent(&mut self, path: &str, target: &str) {
        let path = clean(path);
        if self.entries.contains_key(&path) {
            return;
        }
        self.parents(&path);
        self.entries.insert(path, Node::Symlink(target.to_string()));
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32, mode: u32) {
        let path = clean(path);
        self.parents(&path);
        self.entries
            .insert(path, Node::CharDev { major, minor, mode });
    }

    /// True when `path` has an entry.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&clean(path))
    }

    /// The archive in newc format, ending with the `TRAILER!!!` entry.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, node)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040755, &[], (0, 0)),
                Node::File { data, mode } => (0o100000 | mode, data, (0, 0)),
                Node::Symlink(target) => (0o120777, target.as_bytes(), (0, 0)),
                Node::CharDev { major, minor, mode } => (0o020000 | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            write_entry(&mut out, ino as u32 + 1, name, mode, nlink, data, rdev);
        }
        write_entry(&mut out, 0, "TRAILER!!!", 0, 1, &[], (0, 0));
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    name: &str,
    mode: u32,
    nlink: u32,
    data: &[u8],
    rdev: (u32, u32),
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut a = Archive::new();
        a.file("/bin/x", b"hello".to_vec(), 0o755);
        a.symlink_if_absent("bin/sh", "x");
        a.symlink_if_absent("bin/x", "nope");
        let bytes = a.to_newc();
        assert!(bytes.starts_with(b"070701"));
        assert!(bytes.len().is_multiple_of(4));
        let text = String::from_utf8_lossy(&bytes);
        // bin precedes bin/sh precedes bin/x; the trailer comes last.
        let (d, s, x) = (
            text.find("bin\0").unwrap(),
            text.find("bin/sh\0").unwrap(),
            text.find("bin/x\0").unwrap(),
        );
        assert!(d < s && s < x);
        assert!(text.contains("hello"));
        assert!(!text.contains("nope"));
        assert!(text.trim_end_matches('\0').ends_with("TRAILER!!!"));
    }
}
