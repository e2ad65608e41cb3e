//! Fuzz target: arbitrary bytes, cut arbitrarily, through `FrameReader`.
//!
//! The input is read as a small header and a stream:
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 1 | receive buffer capacity, in units of 256 bytes (raised by the reader) |
//! | 2 | largest frame: 0 means the relay's `MAX_FRAME`, else `1 + n % MAX_FRAME` |
//! | 1 | how many cut sizes follow (`k`) |
//! | k | cut sizes: each read from the "socket" takes `1 + c` bytes, cycling |
//! | … | the stream itself |
//!
//! Small maxima make "above the maximum" reachable with short inputs; the
//! cut sizes decide where reads end, so prefixes and frames straddle reads
//! and buffer compactions. The reader's output is compared with a plain
//! reference decoder that sees the whole stream at once: the same frames in
//! the same order, the same error at the same place, every frame between 1
//! byte and the maximum, an error that sticks (the stream never resumes
//! after one), and the frames re-encoded by `FrameWriter` give back exactly
//! the bytes the reader consumed.

#![no_main]

use hpk_net_daemon::codec::{DecodeError, FrameReader, FrameWriter, LEN_PREFIX, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

/// What a whole stream decodes to: its frames, then an error or the number
/// of bytes left over in an unfinished frame.
struct Expected<'a> {
    frames: Vec<&'a [u8]>,
    end: Result<usize, DecodeError>,
}

/// The reference: the framing rules written as plainly as they can be.
fn reference(stream: &[u8], max_frame: usize) -> Expected<'_> {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < LEN_PREFIX {
            return Expected {
                frames,
                end: Ok(rest.len()),
            };
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if len == 0 {
            return Expected {
                frames,
                end: Err(DecodeError::Empty),
            };
        }
        if len as usize > max_frame {
            let end = Err(DecodeError::TooLong {
                len,
                max: max_frame,
            });
            return Expected { frames, end };
        }
        let total = LEN_PREFIX + len as usize;
        if rest.len() < total {
            return Expected {
                frames,
                end: Ok(rest.len()),
            };
        }
        frames.push(&rest[LEN_PREFIX..total]);
        rest = &rest[total..];
    }
}

/// Splits the input into (capacity, max frame, cut sizes, stream).
fn parse(data: &[u8]) -> Option<(usize, usize, &[u8], &[u8])> {
    let (&[capacity, max_hi, max_lo, cuts], rest) = data.split_first_chunk::<4>()?;
    let max = u16::from_be_bytes([max_hi, max_lo]) as usize;
    let max_frame = if max == 0 {
        MAX_FRAME
    } else {
        1 + max % MAX_FRAME
    };
    let cuts = (cuts as usize).min(rest.len());
    let (cut_sizes, stream) = rest.split_at(cuts);
    Some((capacity as usize * 256, max_frame, cut_sizes, stream))
}

fuzz_target!(|data: &[u8]| {
    let Some((capacity, max_frame, cut_sizes, stream)) = parse(data) else {
        return;
    };
    let expected = reference(stream, max_frame);
    let mut reader = FrameReader::new(capacity, max_frame);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut cuts = cut_sizes.iter().map(|&c| 1 + c as usize).cycle();
    let mut rest = stream;
    let mut error = None;

    'feed: while !rest.is_empty() {
        let space = reader.read_space();
        assert!(!space.is_empty(), "read_space must never be empty");
        let want = cuts.next().unwrap_or(usize::MAX);
        let n = want.min(rest.len()).min(space.len());
        space[..n].copy_from_slice(&rest[..n]);
        reader.advance(n);
        rest = &rest[n..];
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty() && frame.len() <= max_frame);
                    frames.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(err) => {
                    // An error is final: asking again must not resync.
                    let again = reader.next_frame().err();
                    assert_eq!(again.as_ref(), Some(&err));
                    error = Some(err);
                    break 'feed;
                }
            }
        }
    }

    assert_eq!(frames.len(), expected.frames.len(), "frame count");
    for (got, want) in frames.iter().zip(&expected.frames) {
        assert_eq!(got.as_slice(), *want);
    }
    match (&expected.end, error) {
        (Err(want), Some(got)) => assert_eq!(*want, got),
        (Ok(leftover), None) => assert_eq!(reader.buffered(), *leftover, "unfinished frame"),
        (want, got) => panic!("reference ended with {want:?}, reader with {got:?}"),
    }

    // Re-encoding what came out gives back the bytes that went in.
    let consumed: usize = frames.iter().map(|f| LEN_PREFIX + f.len()).sum();
    let mut writer = FrameWriter::new(0, max_frame);
    let mut encoded = Vec::with_capacity(consumed);
    for frame in &frames {
        if !writer.push(frame) {
            encoded.extend_from_slice(writer.pending());
            writer.consume(writer.pending().len());
            assert!(writer.push(frame), "an empty writer takes a maximal frame");
        }
    }
    encoded.extend_from_slice(writer.pending());
    assert_eq!(encoded, &stream[..consumed]);
});
