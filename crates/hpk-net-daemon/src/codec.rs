//! Length-prefixed Ethernet framing on the relay's stream socket.
//!
//! Each frame crosses the socket as a 4-byte big-endian length followed by
//! that many bytes (the framing QEMU's stream netdev and passt speak). The
//! relay never allocates per frame: [`FrameReader`] owns one receive buffer
//! that the socket fills and that yields whole frames in place, and
//! [`FrameWriter`] owns one send buffer into which the tap is read frame by
//! frame, each frame landing right behind the prefix reserved for it, so a
//! whole batch leaves with one `write`.
//!
//! Both sides tolerate any split of the stream: a read may end inside a
//! prefix or a frame, and a write may be short; the buffers keep the rest.

use thiserror::Error;

/// Bytes of the big-endian length that precedes every frame.
pub const LEN_PREFIX: usize = 4;

/// Largest Ethernet frame the plain framing carries: a tap's MTU tops out
/// at 65 521, so 65 535 leaves room for the Ethernet header and VLAN tags.
pub const MAX_FRAME: usize = 65_535;

/// Largest frame with the offload extension: the 10-byte vnet header plus
/// a super-frame. The kernel builds a tap's super-frames up to the device's
/// `gso_max_size`, 64 KiB (taps never raise it for BIG TCP), and a UDP
/// super-frame over IPv6 may reach 65 535 bytes of payload behind 40 of IPv6
/// and 14 of Ethernet header; 256 bytes of slack above 64 KiB cover every
/// such header: 10 + 65 536 + 256 = 65 802 bytes.
pub const MAX_VNET_FRAME: usize = crate::tap::VNET_HDR_LEN + 65_536 + 256;

/// Default size of the receive and send buffers: several maximal frames, so
/// a batch of ordinary frames fits with room to spare.
pub const DEFAULT_BUFFER: usize = 256 * 1024;

/// A stream that no longer follows the framing; the connection must end.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A prefix announced a frame of zero bytes, which no peer sends.
    #[error("peer sent a zero-length frame")]
    Empty,
    /// A prefix announced more than the agreed maximum.
    #[error("peer announced a {len}-byte frame, above the {max}-byte maximum")]
    TooLong { len: u32, max: usize },
}

/// Receive side: bytes from the socket in, whole frames out.
pub struct FrameReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_frame: usize,
}

impl FrameReader {
    /// A reader whose frames may be up to `max_frame` bytes long.
    ///
    /// `capacity` is raised to hold at least one frame of the largest size
    /// either framing allows and its prefix, so a partial frame can always
    /// be completed in place, whatever the hello agrees later.
    pub fn new(capacity: usize, max_frame: usize) -> Self {
        let capacity = capacity.max(LEN_PREFIX + max_frame.max(MAX_VNET_FRAME));
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Free space to read the socket into; never empty.
    ///
    /// When too little room is left behind the data for a maximal frame,
    /// the unread tail moves to the front first (at most one partial frame).
    pub fn read_space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < LEN_PREFIX + self.max_frame && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`read_space`](Self::read_space).
    pub fn advance(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// Changes the largest frame accepted from now on (after a hello).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        assert!(
            LEN_PREFIX + max_frame <= self.buf.len(),
            "a {max_frame}-byte frame does not fit the receive buffer"
        );
        self.max_frame = max_frame;
    }

    /// The next whole frame, `None` when more bytes are needed.
    ///
    /// After an error the stream is out of step for good: the caller must
    /// drop the connection.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        let Some(len) = self.whole_frame()? else {
            return Ok(None);
        };
        let frame_start = self.start + LEN_PREFIX;
        self.start = frame_start + len;
        Ok(Some(&self.buf[frame_start..frame_start + len]))
    }

    /// The next whole frame without taking it; `None` when there is none
    /// yet or the stream is broken.
    pub fn peek_frame(&self) -> Option<&[u8]> {
        self.peek_frame_checked().ok().flatten()
    }

    /// Like [`peek_frame`](Self::peek_frame), reporting a broken stream.
    pub fn peek_frame_checked(&self) -> Result<Option<&[u8]>, DecodeError> {
        let Some(len) = self.whole_frame()? else {
            return Ok(None);
        };
        let frame_start = self.start + LEN_PREFIX;
        Ok(Some(&self.buf[frame_start..frame_start + len]))
    }

    /// Drops the frame [`peek_frame`](Self::peek_frame) returned.
    pub fn skip_frame(&mut self) {
        if let Ok(Some(len)) = self.whole_frame() {
            self.start += LEN_PREFIX + len;
        }
    }

    /// The length of the whole frame at the front, if one is there.
    fn whole_frame(&self) -> Result<Option<usize>, DecodeError> {
        let available = &self.buf[self.start..self.end];
        let Some(prefix) = available.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if len as usize > self.max_frame {
            return Err(DecodeError::TooLong {
                len,
                max: self.max_frame,
            });
        }

        if available.len() < LEN_PREFIX + len as usize {
            return Ok(None);
        }
        Ok(Some(len as usize))
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

/// Send side: frames in (read straight from the tap), one byte run out.
pub struct FrameWriter {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_frame: usize,
}

impl FrameWriter {
    /// A writer for frames of up to `max_frame` bytes, batching up to
    /// `capacity` bytes (raised to hold at least one maximal frame).
    pub fn new(capacity: usize, max_frame: usize) -> Self {
        let capacity = capacity.max(LEN_PREFIX + max_frame);
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Room for one more maximal frame, behind a reserved prefix; `None`
    /// when the batch is full and must be flushed first.
    pub fn frame_space(&mut self) -> Option<&mut [u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let frame_start = self.end + LEN_PREFIX;
        if self.buf.len() < frame_start + self.max_frame {
            return None;
        }
        Some(&mut self.buf[frame_start..frame_start + self.max_frame])
    }

    /// Seals a frame of `len` bytes written into the last
    /// [`frame_space`](Self::frame_space).
    pub fn commit(&mut self, len: usize) {
        assert!(
            len > 0 && len <= self.max_frame,
            "frame length {len} out of range"
        );
        let prefix = (len as u32).to_be_bytes();
        self.buf[self.end..self.end + LEN_PREFIX].copy_from_slice(&prefix);
        self.end += LEN_PREFIX + len;
    }

    /// Copies a whole frame in; `false` when the batch has no room for it.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let Some(space) = self.frame_space() else {
            return false;
        };
        space[..frame.len()].copy_from_slice(frame);
        self.commit(frame.len());
        true
    }

    /// Encoded bytes not yet written to the socket.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Records that the socket took `n` bytes of [`pending`](Self::pending).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
    }

    /// Whether everything encoded has been written.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut writer = FrameWriter::new(1 << 20, MAX_FRAME);
        for frame in frames {
            assert!(writer.push(frame));
        }
        writer.pending().to_vec()
    }

    /// Feeds `stream` to a reader in the given chunk sizes and collects frames.
    fn decode_in_chunks(stream: &[u8], chunks: &[usize]) -> Result<Vec<Vec<u8>>, DecodeError> {
        let mut reader = FrameReader::new(0, MAX_FRAME);
        let mut out = Vec::new();
        let mut rest = stream;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let space = reader.read_space();
            let n = (*sizes.next().unwrap()).min(rest.len()).min(space.len());
            space[..n].copy_from_slice(&rest[..n]);
            reader.advance(n);
            rest = &rest[n..];
            while let Some(frame) = reader.next_frame()? {
                out.push(frame.to_vec());
            }
        }
        Ok(out)
    }

    fn sample_frames() -> Vec<Vec<u8>> {
        vec![
            vec![0xaa; 60],
            (0..=255u8).cycle().take(1514).collect(),
            vec![7; 1],
            vec![0x42; MAX_FRAME],
        ]
    }

    #[test]
    fn round_trip_preserves_every_frame() {
        let frames = sample_frames();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let stream = encode(&refs);
        assert_eq!(
            stream.len(),
            frames.iter().map(|f| f.len() + LEN_PREFIX).sum::<usize>()
        );
        assert_eq!(&stream[..4], &60u32.to_be_bytes());
        assert_eq!(decode_in_chunks(&stream, &[usize::MAX]).unwrap(), frames);
    }

    #[test]
    fn a_split_at_every_offset_yields_the_same_frames() {
        let frames = vec![vec![1u8; 60], vec![2u8; 200], vec![3u8; 9]];
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let stream = encode(&refs);
        for cut in 1..stream.len() {
            assert_eq!(
                decode_in_chunks(&stream, &[cut, stream.len()]).unwrap(),
                frames,
                "split at byte {cut}"
            );
        }
    }

    #[test]
    fn byte_by_byte_delivery_decodes() {
        let frames = sample_frames();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(decode_in_chunks(&encode(&refs), &[1]).unwrap(), frames);
    }

    #[test]
    fn many_frames_in_one_read_all_come_out() {
        let frames: Vec<Vec<u8>> = (1..=500u16).map(|n| vec![n as u8; n as usize]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut stream = Vec::new();
        for chunk in refs.chunks(50) {
            stream.extend(encode(chunk));
        }
        assert_eq!(decode_in_chunks(&stream, &[stream.len()]).unwrap(), frames);
    }

    #[test]
    fn zero_length_is_a_protocol_error() {
        let mut stream = encode(&[&[1, 2, 3]]);
        stream.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode_in_chunks(&stream, &[3]), Err(DecodeError::Empty));
    }

    #[test]
    fn oversized_length_is_a_protocol_error_before_any_body_arrives() {
        let mut reader = FrameReader::new(0, MAX_FRAME);
        let prefix = (MAX_FRAME as u32 + 1).to_be_bytes();
        reader.read_space()[..4].copy_from_slice(&prefix);
        reader.advance(4);
        assert_eq!(
            reader.next_frame(),
            Err(DecodeError::TooLong {
                len: MAX_FRAME as u32 + 1,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn a_partial_frame_survives_compaction() {
        // Fill the reader so a maximal frame straddles the end of the buffer.
        let mut reader = FrameReader::new(0, MAX_FRAME);
        let small = encode(&[&[9u8; 100]]);
        let big_frame = vec![5u8; MAX_FRAME];
        let big = encode(&[&big_frame]);
        let space = reader.read_space();
        space[..small.len()].copy_from_slice(&small);
        space[small.len()..small.len() + 1000].copy_from_slice(&big[..1000]);
        reader.advance(small.len() + 1000);
        assert_eq!(reader.next_frame().unwrap().unwrap(), &[9u8; 100][..]);
        assert_eq!(reader.next_frame().unwrap(), None);

        let space = reader.read_space();
        assert!(space.len() >= big.len() - 1000);
        space[..big.len() - 1000].copy_from_slice(&big[1000..]);
        reader.advance(big.len() - 1000);
        assert_eq!(reader.next_frame().unwrap().unwrap(), &big_frame[..]);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn writer_reports_full_and_resumes_after_a_short_write() {
        let mut writer = FrameWriter::new(0, 1000);
        assert!(writer.push(&[1; 1000]));
        assert!(writer.frame_space().is_none(), "one maximal frame fills it");
        writer.consume(10);
        assert_eq!(writer.pending().len(), LEN_PREFIX + 1000 - 10);
        assert!(writer.frame_space().is_none(), "not reusable until drained");
        writer.consume(writer.pending().len());
        assert!(writer.is_empty());
        assert!(writer.frame_space().is_some());
    }
}
