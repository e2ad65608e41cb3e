//! Verified TCP transfers between test namespaces.
//!
//! The sender streams a deterministic pseudo-random sequence; the receiver
//! digests what arrives; both report a [`Digest`] (length and a 64-bit
//! hash), and the test compares them. A corrupted, reordered, lost or
//! duplicated byte changes the hash.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Netns;

/// Length and hash of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub hash: u64,
}

/// A streaming hash (FNV-1a over 64-bit little-endian words, then the tail
/// bytes), fed in arbitrary pieces.
#[derive(Default)]
pub struct Hasher {
    state: u64,
    len: u64,
    carry: [u8; 8],
    carried: usize,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self {
            state: FNV_OFFSET,
            ..Self::default()
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (8 - self.carried).min(bytes.len());
            self.carry[self.carried..self.carried + take].copy_from_slice(&bytes[..take]);
            self.carried += take;
            bytes = &bytes[take..];
            if self.carried == 8 {
                self.mix(u64::from_le_bytes(self.carry));
                self.carried = 0;
            }
            // Whole words straight from the input, without the carry buffer.
            while self.carried == 0 && bytes.len() >= 8 {
                let (word, rest) = bytes.split_first_chunk::<8>().expect("8 bytes");
                self.mix(u64::from_le_bytes(*word));
                bytes = rest;
            }
        }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(FNV_PRIME);
    }

    /// The digest of everything fed.
    pub fn finish(mut self) -> Digest {
        for i in 0..self.carried {
            self.mix(u64::from(self.carry[i]));
        }
        Digest {
            len: self.len,
            hash: self.state,
        }
    }
}

/// Fills `buf` with the sequence from `seed` onwards (xorshift64*).
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let word = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// A receiver listening inside a namespace, digesting one connection.
pub struct Receiver {
    thread: JoinHandle<std::io::Result<(Digest, SocketAddr)>>,
}

impl Receiver {
    /// Listens on `addr` inside `ns` (the socket is bound there), ready
    /// when this returns.
    pub fn listen(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = ns.run(|| TcpListener::bind(addr)).expect("bind receiver");
        let thread = std::thread::spawn(move || {
            let (mut stream, peer) = listener.accept()?;
            Ok((receive_from(&mut stream)?, peer))
        });
        Self { thread }
    }

    /// Waits for the sender to finish and returns what arrived.
    pub fn digest(self) -> std::io::Result<Digest> {
        self.digest_and_peer().map(|(digest, _)| digest)
    }

    /// What arrived, and the source address the receiver saw (after NAT).
    pub fn digest_and_peer(self) -> std::io::Result<(Digest, SocketAddr)> {
        self.thread.join().expect("receiver thread")
    }
}

/// Digests everything `stream` delivers until the peer closes, then closes.
pub fn receive_from(stream: &mut TcpStream) -> std::io::Result<Digest> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hasher.finish())
}

/// Sends `len` bytes of the sequence from `seed` to `dest` from inside
/// `ns`; returns the digest of what was sent.
pub fn send(ns: &Netns, dest: SocketAddr, len: u64, seed: u64) -> std::io::Result<Digest> {
    let mut stream = ns.run(|| TcpStream::connect_timeout(&dest, Duration::from_secs(10)))?;
    send_over(&mut stream, len, seed)
}

/// The digest of `len` bytes of the sequence from `seed`, without sending.
pub fn expected(len: u64, seed: u64) -> Digest {
    let outcome: std::io::Result<Digest> = generate(len, seed, |_| Ok(()));
    outcome.expect("generating alone cannot fail")
}

/// Produces `len` bytes of the sequence from `seed` in chunks, hands each
/// to `sink`, and returns the digest of all of them.
fn generate(
    len: u64,
    seed: u64,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Digest> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut state = seed | 1;
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n], &mut state);
        sink(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finish())
}

/// Sends `len` bytes of the sequence from `seed` over a connected stream,
/// half-closes, and waits for the receiver to close.
pub fn send_over(stream: &mut TcpStream, len: u64, seed: u64) -> std::io::Result<Digest> {
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let digest = generate(len, seed, |chunk| stream.write_all(chunk))?;
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close, so the bytes are known to have landed.
    let _ = stream.read(&mut [0u8; 1]);
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_does_not_depend_on_how_the_stream_is_cut() {
        let mut data = vec![0u8; 10_007];
        fill(&mut data, &mut 7);
        let mut whole = Hasher::new();
        whole.update(&data);
        let whole = whole.finish();
        for cut in [1, 3, 8, 13, 4096] {
            let mut pieces = Hasher::new();
            for piece in data.chunks(cut) {
                pieces.update(piece);
            }
            assert_eq!(pieces.finish(), whole, "pieces of {cut}");
        }
    }

    #[test]
    fn one_flipped_byte_changes_the_hash() {
        let mut data = vec![0u8; 4096];
        fill(&mut data, &mut 11);
        let mut a = Hasher::new();
        a.update(&data);
        data[1234] ^= 1;
        let mut b = Hasher::new();
        b.update(&data);
        assert_ne!(a.finish(), b.finish());
    }
}
