//! A minimal POSIX ustar writer: directories and regular files with fixed
//! owner (root) and one fixed mtime, so the same input gives the same bytes.
//!
//! Image layers and the OCI archive hold a handful of short paths, which is
//! all this supports: a name longer than the 100-byte ustar name field is an
//! error rather than a silently split or truncated entry.

use anyhow::{Result, ensure};

const BLOCK: usize = 512;

/// Builds a tar archive in memory.
pub struct TarBuilder {
    bytes: Vec<u8>,
    mtime: u64,
}

impl TarBuilder {
    /// An empty archive whose entries all carry `mtime` (seconds since the epoch).
    pub fn new(mtime: u64) -> Self {
        Self {
            bytes: Vec::new(),
            mtime,
        }
    }

    /// Adds a directory; `path` without a leading slash, e.g. `usr/local/`.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = if path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        };
        self.header(&path, mode, 0, b'5')
    }

    /// Adds a regular file with `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(path, mode, data.len() as u64, b'0')?;
        self.bytes.extend_from_slice(data);
        let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.bytes.resize(self.bytes.len() + padding, 0);
        Ok(())
    }

    /// The archive, closed by the two zero blocks tar readers expect.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 2 * BLOCK, 0);
        self.bytes
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) -> Result<()> {
        ensure!(
            !path.is_empty() && path.len() < 100 && !path.starts_with('/'),
            "tar entry {path:?}: names must be relative and shorter than 100 bytes"
        );
        ensure!(
            size < 1 << 33,
            "tar entry {path}: {size} bytes do not fit ustar's size field"
        );
        let mut header = [0u8; BLOCK];
        header[..path.len()].copy_from_slice(path.as_bytes());
        octal(&mut header[100..108], u64::from(mode));
        octal(&mut header[108..116], 0); // uid
        octal(&mut header[116..124], 0); // gid
        octal(&mut header[124..136], size);
        octal(&mut header[136..148], self.mtime);
        header[156] = kind;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[265..269].copy_from_slice(b"root");
        header[297..301].copy_from_slice(b"root");

        // The checksum is the byte sum with its own field read as spaces.
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&byte| u32::from(byte)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        self.bytes.extend_from_slice(&header);
        Ok(())
    }
}

/// Writes `value` as zero-padded octal filling `field` but its last byte (NUL).
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}
