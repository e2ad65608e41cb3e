//! The hello: how client and server agree on offloads at every connection.
//!
//! Theory of operation. The baseline wire format is plain framing (a 4-byte
//! big-endian length, then an Ethernet frame), which QEMU's stream netdev and
//! passt speak too. Anything faster must be agreed first, without breaking a
//! peer that knows only the baseline. So the client's first frame is an
//! *offer*: an Ethernet frame to `01:80:c2:00:00:0f` (a reserved group that
//! no bridge forwards) with the local experimental EtherType `0x88B5`. A plain
//! peer passes it to its tap like any frame, where it goes nowhere. Our
//! server recognises it and replies with an *answer* carrying the agreed
//! subset; from the next frame on both directions use what the answer says.
//!
//! The client sends nothing after the offer until the first frame back has
//! decided: the answer switches; any other frame, or silence for
//! [`HELLO_TIMEOUT`], means a plain peer, and the client keeps that frame for
//! its tap and runs plain. The server likewise holds back its tap's frames
//! until the peer's first frame has decided (or the same timeout has passed),
//! so an answer is always the first frame a client sees.
//!
//! Payload (big-endian, after the 14-byte Ethernet header): magic `HPKR`,
//! version, kind, flags (bit 0: vnet header little-endian), vnet header
//! length (0 = plain framing), `TUN_F_*` offload bits, largest frame the
//! sender accepts (vnet header included), data path (0 relay; offer 1 = veth
//! wanted, 2 = veth only; answer 1 = veth wired), a reserved byte, then
//! options as type-length-value triples (u8, u8, bytes), of which a reader
//! skips the types it does not know. Decoding never panics on any input.
//!
//! The hello is not on the hot path: it runs once per connection, so it may
//! allocate freely.

use std::time::Duration;

use thiserror::Error;

/// Destination of both hello frames: a reserved link-local group address,
/// which 802.1D bridges never forward.
pub const DESTINATION: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0f];
/// IEEE 802 local experimental EtherType 1.
pub const ETHERTYPE: u16 = 0x88b5;
/// First payload bytes of every hello.
pub const MAGIC: [u8; 4] = *b"HPKR";
/// The version this code speaks.
pub const VERSION: u8 = 1;
/// Flags bit 0: the vnet header's multi-byte fields are little-endian.
pub const FLAG_LITTLE_ENDIAN: u16 = 1;

/// How long either side waits for the peer's first frame. A local UNIX
/// socket answers in microseconds even under load, so this only costs time
/// against a plain peer that stays silent; a plain peer that talks first
/// (most do: ARP, router solicitations) decides much sooner.
pub const HELLO_TIMEOUT: Duration = Duration::from_millis(250);

/// Data path byte: frames go through the relay.
pub const DATA_PATH_RELAY: u8 = 0;
/// Offer: a veth pair is wanted, the relay is acceptable. Answer: veth wired.
pub const DATA_PATH_VETH: u8 = 1;
/// Offer: a veth pair or nothing.
pub const DATA_PATH_VETH_ONLY: u8 = 2;

const ETH_HEADER: usize = 14;
/// Fixed payload before the options.
const FIXED: usize = 4 + 1 + 1 + 2 + 2 + 4 + 4 + 1 + 1;

/// Offer or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Client → server: what the client can do.
    Offer = 1,
    /// Server → client: what both will do.
    Answer = 2,
}

/// One hello, offer or answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub kind: Kind,
    /// [`FLAG_LITTLE_ENDIAN`] and future bits.
    pub flags: u16,
    /// Bytes of `virtio_net_hdr` before every frame; 0 means plain framing.
    pub vnet_header_len: u16,
    /// `TUN_F_*` bits.
    pub offloads: u32,
    /// Largest frame the sender accepts, vnet header included.
    pub max_frame: u32,
    /// One of the `DATA_PATH_*` values.
    pub data_path: u8,
    /// Type-length-value options, in order; unknown types are kept here
    /// and ignored by this code.
    pub options: Vec<(u8, Vec<u8>)>,
}

/// Why a frame is not a hello we can use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HelloError {
    /// Not addressed and typed as a hello at all: an ordinary frame.
    #[error("not a hello frame")]
    NotHello,
    /// Addressed as a hello but too short or with a bad magic.
    #[error("malformed hello: {0}")]
    Malformed(&'static str),
    /// A hello of a version this code does not speak.
    #[error("hello version {0} is not supported (this relay speaks {VERSION})")]
    Version(u8),
    /// A kind byte that is neither offer nor answer.
    #[error("hello kind {0} is unknown")]
    Kind(u8),
}

impl Hello {
    /// The Ethernet frame carrying this hello, sent from `source`.
    ///
    /// Options longer than 255 bytes cannot be encoded and are left out.
    pub fn encode(&self, source: [u8; 6]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(ETH_HEADER + FIXED + 16);
        frame.extend_from_slice(&DESTINATION);
        frame.extend_from_slice(&source);
        frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(&MAGIC);
        frame.push(VERSION);
        frame.push(self.kind as u8);
        frame.extend_from_slice(&self.flags.to_be_bytes());
        frame.extend_from_slice(&self.vnet_header_len.to_be_bytes());
        frame.extend_from_slice(&self.offloads.to_be_bytes());
        frame.extend_from_slice(&self.max_frame.to_be_bytes());
        frame.push(self.data_path);
        frame.push(0);
        for (kind, value) in &self.options {
            let Ok(len) = u8::try_from(value.len()) else {
                continue;
            };
            frame.push(*kind);
            frame.push(len);
            frame.extend_from_slice(value);
        }
        frame
    }

    /// Reads a hello from an Ethernet frame (no vnet header in front).
    pub fn decode(frame: &[u8]) -> Result<Self, HelloError> {
        if !is_hello(frame) {
            return Err(HelloError::NotHello);
        }
        let payload = &frame[ETH_HEADER..];
        let Some(fixed) = payload.first_chunk::<FIXED>() else {
            return Err(HelloError::Malformed("shorter than its fixed fields"));
        };
        if fixed[..4] != MAGIC {
            return Err(HelloError::Malformed("bad magic"));
        }
        if fixed[4] != VERSION {
            return Err(HelloError::Version(fixed[4]));
        }
        let kind = match fixed[5] {
            1 => Kind::Offer,
            2 => Kind::Answer,
            other => return Err(HelloError::Kind(other)),
        };
        Ok(Self {
            kind,
            flags: u16::from_be_bytes([fixed[6], fixed[7]]),
            vnet_header_len: u16::from_be_bytes([fixed[8], fixed[9]]),
            offloads: u32::from_be_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]),
            max_frame: u32::from_be_bytes([fixed[14], fixed[15], fixed[16], fixed[17]]),
            data_path: fixed[18],
            options: decode_options(&payload[FIXED..])?,
        })
    }

    /// The answer to this offer from a side that can take `offloads` and
    /// frames of `max_frame` bytes with a `vnet_header_len`-byte header
    /// (0: plain framing only). Offloads need the header in the same byte
    /// order on both sides, so anything else falls back to plain framing.
    pub fn answer(&self, vnet_header_len: u16, offloads: u32, max_frame: u32) -> Hello {
        let same_header = vnet_header_len != 0
            && self.vnet_header_len == vnet_header_len
            && self.flags & FLAG_LITTLE_ENDIAN == native_flags() & FLAG_LITTLE_ENDIAN;
        let (flags, header, offloads) = if same_header {
            (native_flags(), vnet_header_len, self.offloads & offloads)
        } else {
            (native_flags(), 0, 0)
        };
        Hello {
            kind: Kind::Answer,
            flags,
            vnet_header_len: header,
            offloads,
            max_frame: max_frame.min(self.max_frame),
            data_path: DATA_PATH_RELAY,
            options: Vec::new(),
        }
    }
}

/// The flags describing this machine's vnet header byte order (the tap
/// uses native order, which is little-endian on every host we build for).
pub fn native_flags() -> u16 {
    if cfg!(target_endian = "little") {
        FLAG_LITTLE_ENDIAN
    } else {
        0
    }
}

/// Whether `frame` is addressed and typed as a hello (cheap; no parsing).
pub fn is_hello(frame: &[u8]) -> bool {
    frame.len() >= ETH_HEADER
        && frame[..6] == DESTINATION
        && frame[12..14] == ETHERTYPE.to_be_bytes()
}

fn decode_options(mut rest: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, HelloError> {
    let mut options = Vec::new();
    // Ethernet pads short frames to 60 bytes; trailing zeros are padding.
    while !rest.is_empty() && rest.iter().any(|&b| b != 0) {
        let [kind, len, tail @ ..] = rest else {
            return Err(HelloError::Malformed("option header cut short"));
        };
        let len = usize::from(*len);
        if tail.len() < len {
            return Err(HelloError::Malformed("option value cut short"));
        }
        options.push((*kind, tail[..len].to_vec()));
        rest = &tail[len..];
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x0a, 0x58, 10, 99, 0, 2];

    fn offer() -> Hello {
        Hello {
            kind: Kind::Offer,
            flags: FLAG_LITTLE_ENDIAN,
            vnet_header_len: 10,
            offloads: 0x1f,
            max_frame: 65_802,
            data_path: DATA_PATH_VETH,
            options: vec![(7, b"abc".to_vec()), (200, Vec::new())],
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let frame = offer().encode(MAC);
        assert_eq!(&frame[..6], &DESTINATION);
        assert_eq!(&frame[6..12], &MAC);
        assert_eq!(&frame[12..14], &[0x88, 0xb5]);
        assert_eq!(&frame[14..18], b"HPKR");
        assert_eq!(Hello::decode(&frame), Ok(offer()));
    }

    #[test]
    fn layout_matches_the_design_table() {
        let frame = offer().encode(MAC);
        let payload = &frame[14..];
        assert_eq!(payload[4], 1, "version");
        assert_eq!(payload[5], 1, "kind offer");
        assert_eq!(&payload[6..8], &[0, 1], "flags");
        assert_eq!(&payload[8..10], &[0, 10], "vnet header length");
        assert_eq!(&payload[10..14], &[0, 0, 0, 0x1f], "offloads");
        assert_eq!(&payload[14..18], &65_802u32.to_be_bytes(), "max frame");
        assert_eq!(payload[18], 1, "data path");
        assert_eq!(payload[19], 0, "reserved");
        assert_eq!(&payload[20..], &[7, 3, b'a', b'b', b'c', 200, 0]);
    }

    #[test]
    fn ethernet_padding_is_not_an_option() {
        let mut hello = offer();
        hello.options.clear();
        let mut frame = hello.encode(MAC);
        frame.resize(60, 0);
        assert_eq!(Hello::decode(&frame), Ok(hello));
    }

    #[test]
    fn ordinary_frames_are_not_hellos() {
        let mut frame = offer().encode(MAC);
        frame[0] = 0xff;
        assert_eq!(Hello::decode(&frame), Err(HelloError::NotHello));
        let mut frame = offer().encode(MAC);
        frame[13] = 0x00;
        assert_eq!(Hello::decode(&frame), Err(HelloError::NotHello));
        assert_eq!(Hello::decode(&[]), Err(HelloError::NotHello));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_option_list_never_a_panic() {
        let frame = offer().encode(MAC);
        for cut in 0..frame.len() {
            let result = Hello::decode(&frame[..cut]);
            assert_ne!(result, Ok(offer()), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A fixed-seed xorshift: repeatable, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 80) as usize;
            let mut frame = offer().encode(MAC);
            frame.truncate(14 + len.min(frame.len() - 14));
            for (i, byte) in frame.iter_mut().enumerate().skip(14) {
                *byte ^= (state >> (i % 57)) as u8;
            }
            let _ = Hello::decode(&frame);
        }
    }

    #[test]
    fn bad_magic_version_and_kind_are_reported() {
        let mut frame = offer().encode(MAC);
        frame[14] = b'X';
        assert_eq!(
            Hello::decode(&frame),
            Err(HelloError::Malformed("bad magic"))
        );
        let mut frame = offer().encode(MAC);
        frame[18] = 2;
        assert_eq!(Hello::decode(&frame), Err(HelloError::Version(2)));
        let mut frame = offer().encode(MAC);
        frame[19] = 9;
        assert_eq!(Hello::decode(&frame), Err(HelloError::Kind(9)));
    }

    #[test]
    fn the_answer_is_the_common_subset() {
        let answer = offer().answer(10, 0x07, 70_000);
        assert_eq!(answer.kind, Kind::Answer);
        assert_eq!(answer.vnet_header_len, 10);
        assert_eq!(answer.offloads, 0x07);
        assert_eq!(answer.max_frame, 65_802);
        assert_eq!(answer.data_path, DATA_PATH_RELAY);
    }

    #[test]
    fn a_plain_server_or_a_mismatched_header_answers_plain() {
        let answer = offer().answer(0, 0x1f, 65_535);
        assert_eq!((answer.vnet_header_len, answer.offloads), (0, 0));
        let answer = offer().answer(12, 0x1f, 65_535);
        assert_eq!((answer.vnet_header_len, answer.offloads), (0, 0));
        let mut foreign = offer();
        foreign.flags ^= FLAG_LITTLE_ENDIAN;
        let answer = foreign.answer(10, 0x1f, 65_535);
        assert_eq!((answer.vnet_header_len, answer.offloads), (0, 0));
    }
}
