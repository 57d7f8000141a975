//! Wire codec for IKEv2 messages (RFC 7296 section 3, RFC 7383 2.5).
//!
//! Decoding walks the payload chain with a bounds-checked [`Reader`]; every length field
//! is checked against the octets actually present, every count against [`DecodeLimits`],
//! and every rejection is a typed [`Error`]. Nothing here panics on any input, and no
//! allocation is larger than the input it describes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::error::Error;
use crate::event::{Identity, Spi, TrafficSelector};

/// Size of the fixed IKE header (RFC 7296 3.1).
pub const HEADER_LEN: usize = 28;
/// Size of the generic payload header (RFC 7296 3.2).
pub const GENERIC_HEADER_LEN: usize = 4;
/// Size of the SKF payload header: generic header plus fragment number and total (RFC 7383 2.5).
pub const SKF_HEADER_LEN: usize = 8;

/// Bounds applied while decoding untrusted input (RFC 7296 2.21.2: anything outside them
/// is treated as malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest datagram (or reassembled message) accepted.
    pub max_message: usize,
    /// Most payloads in one chain (outer or inner).
    pub max_payloads: usize,
    /// Most proposals in one SA payload.
    pub max_proposals: usize,
    /// Most transforms in one proposal.
    pub max_transforms: usize,
    /// Most attributes in one transform.
    pub max_transform_attributes: usize,
    /// Most traffic selectors in one TS payload.
    pub max_selectors: usize,
    /// Most attributes in one configuration payload.
    pub max_cfg_attributes: usize,
    /// Most SPIs in one delete payload.
    pub max_delete_spis: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_message: 64 * 1024,
            max_payloads: 64,
            max_proposals: 64,
            max_transforms: 128,
            max_transform_attributes: 8,
            max_selectors: 64,
            max_cfg_attributes: 64,
            max_delete_spis: 1024,
        }
    }
}

impl From<&crate::config::Limits> for DecodeLimits {
    /// The engine's configured message size limit with the default nesting bounds.
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            max_message: l.max_message,
            ..Self::default()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reader / writer helpers
// ---------------------------------------------------------------------------------------

/// Bounds-checked big-endian reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                needed: n,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let b = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
}

fn bad_len(field: &'static str, detail: impl Into<String>) -> Error {
    Error::BadLength {
        field,
        detail: detail.into(),
    }
}

fn invalid(field: &'static str, detail: impl Into<String>) -> Error {
    Error::InvalidField {
        field,
        detail: detail.into(),
    }
}

/// Reads a 16-bit length that covers `header_len` octets already consumed plus the rest,
/// and returns a reader over the rest. Used for payloads, proposals, transforms, TS.
fn sub_reader<'a>(
    r: &mut Reader<'a>,
    length: u16,
    header_len: usize,
    field: &'static str,
) -> Result<Reader<'a>, Error> {
    let length = usize::from(length);
    if length < header_len {
        return Err(bad_len(
            field,
            format!("{length} is below the minimum {header_len}"),
        ));
    }
    let body_len = length - header_len;
    if body_len > r.remaining() {
        return Err(bad_len(
            field,
            format!(
                "{length} exceeds the {} octets present",
                r.remaining() + header_len
            ),
        ));
    }
    Ok(Reader::new(r.take(body_len)?))
}

/// Patches the 16-bit length at `start + 2` with the number of octets from `start` to the end.
fn patch_len16(out: &mut [u8], start: usize, field: &'static str) -> Result<(), Error> {
    let len = out.len() - start;
    let len16 = u16::try_from(len)
        .map_err(|_| invalid(field, format!("{len} octets do not fit a 16-bit length")))?;
    out[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Number mappings
// ---------------------------------------------------------------------------------------

impl ExchangeType {
    /// IANA exchange type number (RFC 7296 3.1).
    pub fn to_u8(self) -> u8 {
        match self {
            ExchangeType::IkeSaInit => 34,
            ExchangeType::IkeAuth => 35,
            ExchangeType::CreateChildSa => 36,
            ExchangeType::Informational => 37,
            ExchangeType::Other(v) => v,
        }
    }
}

impl From<u8> for ExchangeType {
    fn from(v: u8) -> Self {
        match v {
            34 => ExchangeType::IkeSaInit,
            35 => ExchangeType::IkeAuth,
            36 => ExchangeType::CreateChildSa,
            37 => ExchangeType::Informational,
            v => ExchangeType::Other(v),
        }
    }
}

impl ProtocolId {
    /// IANA security protocol number (RFC 7296 3.3.1).
    pub fn to_u8(self) -> u8 {
        match self {
            ProtocolId::Ike => 1,
            ProtocolId::Ah => 2,
            ProtocolId::Esp => 3,
            ProtocolId::Other(v) => v,
        }
    }
}

impl From<u8> for ProtocolId {
    fn from(v: u8) -> Self {
        match v {
            1 => ProtocolId::Ike,
            2 => ProtocolId::Ah,
            3 => ProtocolId::Esp,
            v => ProtocolId::Other(v),
        }
    }
}

impl CfgType {
    /// Configuration payload type number (RFC 7296 3.15).
    pub fn to_u8(self) -> u8 {
        match self {
            CfgType::Request => 1,
            CfgType::Reply => 2,
            CfgType::Set => 3,
            CfgType::Ack => 4,
            CfgType::Other(v) => v,
        }
    }
}

impl From<u8> for CfgType {
    fn from(v: u8) -> Self {
        match v {
            1 => CfgType::Request,
            2 => CfgType::Reply,
            3 => CfgType::Set,
            4 => CfgType::Ack,
            v => CfgType::Other(v),
        }
    }
}

impl Payload {
    /// The payload type number of this payload (RFC 7296 3.2, IANA "IKEv2 Payload Types").
    pub fn kind(&self) -> u8 {
        match self {
            Payload::Sa(_) => payload_type::SA,
            Payload::Ke { .. } => payload_type::KE,
            Payload::IdI(_) => payload_type::IDI,
            Payload::IdR(_) => payload_type::IDR,
            Payload::Cert { .. } => payload_type::CERT,
            Payload::CertReq { .. } => payload_type::CERTREQ,
            Payload::Auth { .. } => payload_type::AUTH,
            Payload::Nonce(_) => payload_type::NONCE,
            Payload::Notify(_) => payload_type::NOTIFY,
            Payload::Delete(_) => payload_type::DELETE,
            Payload::VendorId(_) => payload_type::VENDOR_ID,
            Payload::TsI(_) => payload_type::TSI,
            Payload::TsR(_) => payload_type::TSR,
            Payload::Sk { .. } => payload_type::SK,
            Payload::Cfg { .. } => payload_type::CP,
            Payload::Skf { .. } => payload_type::SKF,
            Payload::Unknown { kind, .. } => *kind,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------

const FLAG_INITIATOR: u8 = 0x08;
const FLAG_RESPONSE: u8 = 0x20;

impl Header {
    /// Decodes the fixed header (RFC 7296 3.1) from the start of `buf`, for demultiplexing.
    ///
    /// Checks that 28 octets are present, that the major version is 2 (RFC 7296 2.5:
    /// anything else is answered with INVALID_MAJOR_VERSION) and that the length field is
    /// at least the header size. It does not compare the length field with `buf.len()`;
    /// [`Message::decode`] does.
    pub fn decode(buf: &[u8]) -> Result<Header, Error> {
        let h = Self::peek(buf)?;
        if h.major_version != 2 {
            return Err(Error::InvalidMajorVersion(h.major_version));
        }
        if (h.length as usize) < HEADER_LEN {
            return Err(bad_len(
                "header length",
                format!("{} is below 28", h.length),
            ));
        }
        Ok(h)
    }

    /// Reads the 28 header octets without judging the version or length fields: what a
    /// responder needs to answer INVALID_MAJOR_VERSION with the sender's SPIs and message ID
    /// (RFC 7296 2.5). Fails only when fewer than 28 octets are present.
    pub fn peek(buf: &[u8]) -> Result<Header, Error> {
        let mut r = Reader::new(buf);
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated {
                needed: HEADER_LEN,
                have: buf.len(),
            });
        }
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = r.u8()?;
        let version = r.u8()?;
        let major_version = version >> 4;
        let minor_version = version & 0x0f;
        let exchange = ExchangeType::from(r.u8()?);
        let flags = r.u8()?;
        let message_id = r.u32()?;
        let length = r.u32()?;
        Ok(Header {
            spi_i,
            spi_r,
            next_payload,
            major_version,
            minor_version,
            exchange,
            initiator: flags & FLAG_INITIATOR != 0,
            response: flags & FLAG_RESPONSE != 0,
            message_id,
            length,
        })
    }

    /// Encodes the header as it stands (RFC 7296 3.1); the Version flag is always clear.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.spi_i.to_be_bytes());
        b[8..16].copy_from_slice(&self.spi_r.to_be_bytes());
        b[16] = self.next_payload;
        b[17] = (self.major_version << 4) | (self.minor_version & 0x0f);
        b[18] = self.exchange.to_u8();
        let mut flags = 0;
        if self.initiator {
            flags |= FLAG_INITIATOR;
        }
        if self.response {
            flags |= FLAG_RESPONSE;
        }
        b[19] = flags;
        b[20..24].copy_from_slice(&self.message_id.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// A version 2.0 header with zero next-payload and length (filled in by encoding).
    pub fn new(
        spi_i: u64,
        spi_r: u64,
        exchange: ExchangeType,
        initiator: bool,
        response: bool,
        message_id: u32,
    ) -> Self {
        Header {
            spi_i,
            spi_r,
            next_payload: 0,
            major_version: 2,
            minor_version: 0,
            exchange,
            initiator,
            response,
            message_id,
            length: HEADER_LEN as u32,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Message
// ---------------------------------------------------------------------------------------

impl Message {
    /// Decodes a whole message (RFC 7296 3): header, then the payload chain.
    ///
    /// The header length must equal `buf.len()`. An SK or SKF payload must be the last
    /// payload (RFC 7296 3.14, RFC 7383 2.5) and is kept opaque. Unknown payloads are kept
    /// as [`Payload::Unknown`] unless their critical bit is set, which gives
    /// [`Error::UnsupportedCriticalPayload`] (RFC 7296 2.5).
    pub fn decode(buf: &[u8], limits: &DecodeLimits) -> Result<Message, Error> {
        Self::decode_locating_sk(buf, limits).map(|(m, _)| m)
    }

    /// Like [`Message::decode`], and also returns the offset in `buf` where the SK (or SKF)
    /// body starts: `buf[..offset]` is the associated data / integrity-protected prefix the
    /// crypto layer needs (RFC 7296 3.14, RFC 5282 5.1, RFC 7383 2.5.3).
    pub fn decode_locating_sk(
        buf: &[u8],
        limits: &DecodeLimits,
    ) -> Result<(Message, Option<usize>), Error> {
        if buf.len() > limits.max_message {
            return Err(Error::Oversized(buf.len()));
        }
        let header = Header::decode(buf)?;
        if header.length as usize != buf.len() {
            return Err(bad_len(
                "header length",
                format!(
                    "{} does not match the datagram length {}",
                    header.length,
                    buf.len()
                ),
            ));
        }
        let (payloads, sk) = decode_chain(
            header.next_payload,
            &buf[HEADER_LEN..],
            HEADER_LEN,
            limits,
            true,
        )?;
        Ok((Message { header, payloads }, sk))
    }

    /// Encodes the message, computing the header's next-payload and length fields and every
    /// payload length and next-payload link (RFC 7296 3.1, 3.2).
    ///
    /// Fails with [`Error::Oversized`] if a payload exceeds 65535 octets and with
    /// [`Error::InvalidField`] if an SK/SKF payload is not last.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        let first = encode_chain(&self.payloads, 0, &mut out, true)?;
        let mut header = self.header;
        header.next_payload = first;
        header.length = u32::try_from(out.len()).map_err(|_| Error::Oversized(out.len()))?;
        out[..HEADER_LEN].copy_from_slice(&header.encode());
        Ok(out)
    }

    /// The first notify of `kind`, if any.
    pub fn notify(&self, kind: NotifyType) -> Option<&Notify> {
        self.payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.kind == kind => Some(n),
            _ => None,
        })
    }
}

/// Encodes an inner (to-be-encrypted) payload chain (RFC 7296 3.14): returns the type of
/// the first payload (for the SK header's Next Payload field) and the chained bytes.
pub fn encode_payloads(payloads: &[Payload]) -> Result<(u8, Vec<u8>), Error> {
    let mut out = Vec::with_capacity(256);
    let first = encode_chain(payloads, 0, &mut out, false)?;
    Ok((first, out))
}

/// Decodes a decrypted inner payload chain starting with payload type `first_type`
/// (RFC 7296 3.14). SK/SKF payloads are not allowed inside.
pub fn decode_payloads(
    first_type: u8,
    buf: &[u8],
    limits: &DecodeLimits,
) -> Result<Vec<Payload>, Error> {
    if buf.len() > limits.max_message {
        return Err(Error::Oversized(buf.len()));
    }
    decode_chain(first_type, buf, 0, limits, false).map(|(p, _)| p)
}

/// Builds the bytes of a message whose last payload is SK, up to and including the SK
/// generic payload header, with every length final for an SK body of `body_len` octets
/// (IV, ciphertext, padding, ICV). The crypto layer appends the body: these bytes are the
/// AEAD associated data (RFC 5282 5.1) / the start of the ICV input (RFC 7296 3.14).
///
/// `outer` holds unencrypted payloads placed before SK (normally none).
pub fn encode_sk_prefix(
    header: &Header,
    outer: &[Payload],
    first_inner: u8,
    body_len: usize,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + GENERIC_HEADER_LEN + 64);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let first = encode_chain(outer, payload_type::SK, &mut out, false)?;
    let sk_len = GENERIC_HEADER_LEN + body_len;
    let sk_len16 = u16::try_from(sk_len).map_err(|_| Error::Oversized(sk_len))?;
    out.push(first_inner);
    out.push(0);
    out.extend_from_slice(&sk_len16.to_be_bytes());
    let total = out.len() + body_len;
    let mut h = *header;
    h.next_payload = if outer.is_empty() {
        payload_type::SK
    } else {
        first
    };
    h.length = u32::try_from(total).map_err(|_| Error::Oversized(total))?;
    out[..HEADER_LEN].copy_from_slice(&h.encode());
    Ok(out)
}

/// Builds the bytes of one IKE fragment message (RFC 7383 2.5) up to and including the
/// Total Fragments field, with every length final for a body of `body_len` octets. These
/// bytes are the associated data / ICV prefix of the fragment (RFC 7383 2.5.3).
///
/// `first_inner` is the first inner payload type for fragment 1 and 0 for the others.
pub fn encode_skf_prefix(
    header: &Header,
    first_inner: u8,
    number: u16,
    total: u16,
    body_len: usize,
) -> Result<Vec<u8>, Error> {
    if number == 0 || number > total {
        return Err(invalid("fragment number", format!("{number} of {total}")));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + SKF_HEADER_LEN);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let skf_len = SKF_HEADER_LEN + body_len;
    let skf_len16 = u16::try_from(skf_len).map_err(|_| Error::Oversized(skf_len))?;
    out.push(first_inner);
    out.push(0);
    out.extend_from_slice(&skf_len16.to_be_bytes());
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(&total.to_be_bytes());
    let mut h = *header;
    h.next_payload = payload_type::SKF;
    let len = out.len() + body_len;
    h.length = u32::try_from(len).map_err(|_| Error::Oversized(len))?;
    out[..HEADER_LEN].copy_from_slice(&h.encode());
    Ok(out)
}

/// The octets of an identification payload body after the generic header: ID type,
/// three reserved octets, identification data (RFC 7296 3.5). This is `IDi'`/`IDr'` of the
/// AUTH computation (RFC 7296 2.15).
pub fn id_payload_body(id: &Identity) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 16);
    encode_identity(id, &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// Payload chain
// ---------------------------------------------------------------------------------------

fn decode_chain(
    first: u8,
    buf: &[u8],
    base: usize,
    limits: &DecodeLimits,
    allow_sk: bool,
) -> Result<(Vec<Payload>, Option<usize>), Error> {
    let mut r = Reader::new(buf);
    let mut next = first;
    let mut payloads = Vec::new();
    let mut sk_offset = None;
    while next != payload_type::NONE {
        if payloads.len() >= limits.max_payloads {
            return Err(Error::TooMany("payloads"));
        }
        let kind = next;
        let start = r.pos;
        next = r.u8()?;
        let critical = r.u8()? & 0x80 != 0;
        let length = r.u16()?;
        let mut body = sub_reader(&mut r, length, GENERIC_HEADER_LEN, "payload length")?;
        let payload = match kind {
            payload_type::SK | payload_type::SKF => {
                if !allow_sk {
                    return Err(invalid(
                        "payload type",
                        "SK/SKF inside an encrypted payload",
                    ));
                }
                if !r.is_empty() {
                    return Err(invalid("payload order", "SK/SKF is not the last payload"));
                }
                let first_inner = next;
                next = payload_type::NONE;
                if kind == payload_type::SK {
                    sk_offset = Some(base + start + GENERIC_HEADER_LEN);
                    Payload::Sk {
                        first_inner,
                        body: body.rest().to_vec(),
                    }
                } else {
                    let number = body.u16()?;
                    let total = body.u16()?;
                    if number == 0 || number > total {
                        return Err(invalid("fragment number", format!("{number} of {total}")));
                    }
                    sk_offset = Some(base + start + SKF_HEADER_LEN);
                    Payload::Skf {
                        first_inner,
                        number,
                        total,
                        body: body.rest().to_vec(),
                    }
                }
            }
            _ => decode_payload(kind, critical, &mut body, limits)?,
        };
        if !body.is_empty() {
            return Err(bad_len(
                "payload length",
                format!("{} trailing octets", body.remaining()),
            ));
        }
        payloads.push(payload);
    }
    if !r.is_empty() {
        return Err(bad_len(
            "payload chain",
            format!("{} octets after the last payload", r.remaining()),
        ));
    }
    Ok((payloads, sk_offset))
}

fn decode_payload(
    kind: u8,
    critical: bool,
    b: &mut Reader<'_>,
    limits: &DecodeLimits,
) -> Result<Payload, Error> {
    Ok(match kind {
        payload_type::SA => Payload::Sa(decode_sa(b, limits)?),
        payload_type::KE => {
            let group = b.u16()?;
            let _reserved = b.u16()?;
            Payload::Ke {
                group,
                data: b.rest().to_vec(),
            }
        }
        payload_type::IDI => Payload::IdI(decode_identity(b)?),
        payload_type::IDR => Payload::IdR(decode_identity(b)?),
        payload_type::CERT => {
            let encoding = b.u8()?;
            Payload::Cert {
                encoding,
                data: b.rest().to_vec(),
            }
        }
        payload_type::CERTREQ => {
            let encoding = b.u8()?;
            Payload::CertReq {
                encoding,
                data: b.rest().to_vec(),
            }
        }
        payload_type::AUTH => {
            let method = AuthMethod(b.u8()?);
            let _reserved = b.take(3)?;
            Payload::Auth {
                method,
                data: b.rest().to_vec(),
            }
        }
        payload_type::NONCE => {
            let n = b.rest();
            if !(NONCE_MIN..=NONCE_MAX).contains(&n.len()) {
                return Err(invalid(
                    "nonce",
                    format!("{} octets, need 16..=256", n.len()),
                ));
            }
            Payload::Nonce(n.to_vec())
        }
        payload_type::NOTIFY => {
            let protocol = ProtocolId::from(b.u8()?);
            let spi_size = b.u8()?;
            let kind = NotifyType(b.u16()?);
            let spi = b.take(usize::from(spi_size))?.to_vec();
            Payload::Notify(Notify {
                protocol,
                spi,
                kind,
                data: b.rest().to_vec(),
            })
        }
        payload_type::DELETE => Payload::Delete(decode_delete(b, limits)?),
        payload_type::VENDOR_ID => Payload::VendorId(b.rest().to_vec()),
        payload_type::TSI => Payload::TsI(decode_ts(b, limits)?),
        payload_type::TSR => Payload::TsR(decode_ts(b, limits)?),
        payload_type::CP => {
            let kind = CfgType::from(b.u8()?);
            let _reserved = b.take(3)?;
            let mut attributes = Vec::new();
            while !b.is_empty() {
                if attributes.len() >= limits.max_cfg_attributes {
                    return Err(Error::TooMany("configuration attributes"));
                }
                let t = b.u16()?;
                let len = b.u16()?;
                let value = b.take(usize::from(len))?.to_vec();
                // The high bit is reserved (RFC 7296 3.15.1); ignore it on receipt.
                attributes.push(CfgAttribute {
                    kind: t & 0x7fff,
                    value,
                });
            }
            Payload::Cfg { kind, attributes }
        }
        _ => {
            if critical {
                return Err(Error::UnsupportedCriticalPayload(kind));
            }
            Payload::Unknown {
                kind,
                critical,
                body: b.rest().to_vec(),
            }
        }
    })
}

/// Nonce length bounds (RFC 7296 3.9).
pub const NONCE_MIN: usize = 16;
/// Nonce length bounds (RFC 7296 3.9).
pub const NONCE_MAX: usize = 256;

fn decode_sa(b: &mut Reader<'_>, limits: &DecodeLimits) -> Result<Vec<Proposal>, Error> {
    let mut proposals = Vec::new();
    loop {
        if proposals.len() >= limits.max_proposals {
            return Err(Error::TooMany("proposals"));
        }
        let last = b.u8()?;
        let _reserved = b.u8()?;
        let length = b.u16()?;
        let mut p = sub_reader(b, length, 4, "proposal length")?;
        let number = p.u8()?;
        let protocol = ProtocolId::from(p.u8()?);
        let spi_size = p.u8()?;
        let num_transforms = usize::from(p.u8()?);
        let spi = p.take(usize::from(spi_size))?.to_vec();
        if num_transforms > limits.max_transforms {
            return Err(Error::TooMany("transforms"));
        }
        let mut transforms = Vec::with_capacity(num_transforms);
        for i in 0..num_transforms {
            let t_last = p.u8()?;
            let expect = if i + 1 == num_transforms { 0 } else { 3 };
            if t_last != expect {
                return Err(invalid(
                    "transform last substruc",
                    format!("{t_last} at transform {} of {num_transforms}", i + 1),
                ));
            }
            let _reserved = p.u8()?;
            let t_len = p.u16()?;
            let mut t = sub_reader(&mut p, t_len, 4, "transform length")?;
            let kind = t.u8()?;
            let _reserved = t.u8()?;
            let id = t.u16()?;
            let mut key_length = None;
            let mut recognized = true;
            let mut n_attr = 0;
            while !t.is_empty() {
                n_attr += 1;
                if n_attr > limits.max_transform_attributes {
                    return Err(Error::TooMany("transform attributes"));
                }
                let at = t.u16()?;
                if at & 0x8000 != 0 {
                    // TV format: two-octet value.
                    let v = t.u16()?;
                    if at & 0x7fff == ATTR_KEY_LENGTH {
                        if key_length.is_some() {
                            return Err(invalid("transform attribute", "duplicate key length"));
                        }
                        key_length = Some(v);
                    } else {
                        recognized = false;
                    }
                } else {
                    // TLV format: length and value.
                    let len = t.u16()?;
                    let _ = t.take(usize::from(len))?;
                    recognized = false;
                }
            }
            // RFC 7296 3.3.6: a transform with an unrecognized attribute is not acceptable.
            // Dropping it here makes the proposal unacceptable exactly when it would have
            // needed that transform.
            if recognized {
                transforms.push(Transform {
                    kind,
                    id,
                    key_length,
                });
            }
        }
        if !p.is_empty() {
            return Err(bad_len(
                "proposal length",
                format!("{} trailing octets", p.remaining()),
            ));
        }
        proposals.push(Proposal {
            number,
            protocol,
            spi,
            transforms,
        });
        match last {
            0 if b.is_empty() => break,
            2 if !b.is_empty() => continue,
            0 => {
                return Err(invalid(
                    "proposal last substruc",
                    "0 but more proposals follow",
                ))
            }
            2 => return Err(Error::Truncated { needed: 8, have: 0 }),
            v => return Err(invalid("proposal last substruc", format!("{v}"))),
        }
    }
    Ok(proposals)
}

/// Transform attribute type Key Length (RFC 7296 3.3.5), TV format.
pub const ATTR_KEY_LENGTH: u16 = 14;

fn decode_identity(b: &mut Reader<'_>) -> Result<Identity, Error> {
    let id_type = b.u8()?;
    let _reserved = b.take(3)?;
    let data = b.rest();
    Ok(match id_type {
        id_type::IPV4_ADDR => {
            let a: [u8; 4] = data
                .try_into()
                .map_err(|_| invalid("ID_IPV4_ADDR", format!("{} octets", data.len())))?;
            Identity::Ipv4(Ipv4Addr::from(a))
        }
        id_type::IPV6_ADDR => {
            let a: [u8; 16] = data
                .try_into()
                .map_err(|_| invalid("ID_IPV6_ADDR", format!("{} octets", data.len())))?;
            Identity::Ipv6(Ipv6Addr::from(a))
        }
        id_type::FQDN => Identity::Fqdn(
            String::from_utf8(data.to_vec()).map_err(|_| invalid("ID_FQDN", "not UTF-8"))?,
        ),
        id_type::RFC822_ADDR => Identity::Rfc822(
            String::from_utf8(data.to_vec()).map_err(|_| invalid("ID_RFC822_ADDR", "not UTF-8"))?,
        ),
        id_type::DER_ASN1_DN => Identity::DerAsn1Dn(data.to_vec()),
        id_type::KEY_ID => Identity::KeyId(data.to_vec()),
        t => return Err(invalid("ID type", format!("{t} is not supported"))),
    })
}

fn decode_delete(b: &mut Reader<'_>, limits: &DecodeLimits) -> Result<Delete, Error> {
    let protocol = ProtocolId::from(b.u8()?);
    let spi_size = b.u8()?;
    let n = usize::from(b.u16()?);
    match (protocol, spi_size) {
        (ProtocolId::Ike, 0) => {
            if n != 0 || !b.is_empty() {
                return Err(invalid("delete", "IKE SA delete carries no SPIs"));
            }
            Ok(Delete {
                protocol,
                spis: Vec::new(),
            })
        }
        (ProtocolId::Esp | ProtocolId::Ah, 4) => {
            if n > limits.max_delete_spis {
                return Err(Error::TooMany("delete SPIs"));
            }
            if b.remaining() != n * 4 {
                return Err(bad_len(
                    "delete",
                    format!("{n} SPIs need {} octets, have {}", n * 4, b.remaining()),
                ));
            }
            let mut spis = Vec::with_capacity(n);
            for _ in 0..n {
                spis.push(Spi(b.u32()?));
            }
            Ok(Delete { protocol, spis })
        }
        (p, s) => Err(invalid(
            "delete",
            format!("protocol {} with SPI size {s}", p.to_u8()),
        )),
    }
}

fn decode_ts(b: &mut Reader<'_>, limits: &DecodeLimits) -> Result<Vec<TrafficSelector>, Error> {
    let n = usize::from(b.u8()?);
    let _reserved = b.take(3)?;
    if n > limits.max_selectors {
        return Err(Error::TooMany("traffic selectors"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ts_type = b.u8()?;
        let protocol = b.u8()?;
        let len = b.u16()?;
        let mut s = sub_reader(b, len, 4, "selector length")?;
        let start_port = s.u16()?;
        let end_port = s.u16()?;
        let (start, end) = match ts_type {
            ts_type::IPV4_ADDR_RANGE => {
                if len != 16 {
                    return Err(bad_len(
                        "selector length",
                        format!("{len} for IPv4, need 16"),
                    ));
                }
                (IpAddr::from(s.array::<4>()?), IpAddr::from(s.array::<4>()?))
            }
            ts_type::IPV6_ADDR_RANGE => {
                if len != 40 {
                    return Err(bad_len(
                        "selector length",
                        format!("{len} for IPv6, need 40"),
                    ));
                }
                (
                    IpAddr::from(s.array::<16>()?),
                    IpAddr::from(s.array::<16>()?),
                )
            }
            t => return Err(invalid("TS type", format!("{t} is not supported"))),
        };
        out.push(TrafficSelector {
            start,
            end,
            protocol,
            start_port,
            end_port,
        });
    }
    if !b.is_empty() {
        return Err(bad_len(
            "TS payload",
            format!("{} octets after {n} selectors", b.remaining()),
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Appends a chain of payloads to `out`, linking each to the next and the last to
/// `last_next`. Returns the type of the first payload (or `last_next` if none).
fn encode_chain(
    payloads: &[Payload],
    last_next: u8,
    out: &mut Vec<u8>,
    allow_sk: bool,
) -> Result<u8, Error> {
    for (i, p) in payloads.iter().enumerate() {
        let is_last = i + 1 == payloads.len();
        let next = match p {
            Payload::Sk { first_inner, .. } | Payload::Skf { first_inner, .. } => {
                if !allow_sk {
                    return Err(invalid("payload type", "SK/SKF where not allowed"));
                }
                if !is_last {
                    return Err(invalid("payload order", "SK/SKF is not the last payload"));
                }
                *first_inner
            }
            _ => payloads.get(i + 1).map_or(last_next, Payload::kind),
        };
        let start = out.len();
        out.push(next);
        out.push(match p {
            Payload::Unknown { critical: true, .. } => 0x80,
            _ => 0,
        });
        out.extend_from_slice(&[0, 0]);
        encode_body(p, out)?;
        patch_len16(out, start, "payload length")?;
    }
    Ok(payloads.first().map_or(last_next, Payload::kind))
}

fn encode_body(p: &Payload, out: &mut Vec<u8>) -> Result<(), Error> {
    match p {
        Payload::Sa(proposals) => {
            for (i, prop) in proposals.iter().enumerate() {
                let start = out.len();
                out.push(if i + 1 == proposals.len() { 0 } else { 2 });
                out.push(0);
                out.extend_from_slice(&[0, 0]);
                out.push(prop.number);
                out.push(prop.protocol.to_u8());
                let spi_size = u8::try_from(prop.spi.len())
                    .map_err(|_| invalid("proposal SPI", "too long"))?;
                out.push(spi_size);
                let n = u8::try_from(prop.transforms.len())
                    .map_err(|_| invalid("proposal", "more than 255 transforms"))?;
                out.push(n);
                out.extend_from_slice(&prop.spi);
                for (j, t) in prop.transforms.iter().enumerate() {
                    let t_start = out.len();
                    out.push(if j + 1 == prop.transforms.len() { 0 } else { 3 });
                    out.push(0);
                    out.extend_from_slice(&[0, 0]);
                    out.push(t.kind);
                    out.push(0);
                    out.extend_from_slice(&t.id.to_be_bytes());
                    if let Some(kl) = t.key_length {
                        out.extend_from_slice(&(0x8000 | ATTR_KEY_LENGTH).to_be_bytes());
                        out.extend_from_slice(&kl.to_be_bytes());
                    }
                    patch_len16(out, t_start, "transform length")?;
                }
                patch_len16(out, start, "proposal length")?;
            }
        }
        Payload::Ke { group, data } => {
            out.extend_from_slice(&group.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(data);
        }
        Payload::IdI(id) | Payload::IdR(id) => encode_identity(id, out),
        Payload::Cert { encoding, data } | Payload::CertReq { encoding, data } => {
            out.push(*encoding);
            out.extend_from_slice(data);
        }
        Payload::Auth { method, data } => {
            out.push(method.0);
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(data);
        }
        Payload::Nonce(n) => out.extend_from_slice(n),
        Payload::Notify(n) => {
            out.push(n.protocol.to_u8());
            out.push(u8::try_from(n.spi.len()).map_err(|_| invalid("notify SPI", "too long"))?);
            out.extend_from_slice(&n.kind.0.to_be_bytes());
            out.extend_from_slice(&n.spi);
            out.extend_from_slice(&n.data);
        }
        Payload::Delete(d) => {
            out.push(d.protocol.to_u8());
            match d.protocol {
                // RFC 7296 3.11: deleting the IKE SA names no SPI.
                ProtocolId::Ike if d.spis.is_empty() => out.extend_from_slice(&[0, 0, 0]),
                ProtocolId::Esp | ProtocolId::Ah => {
                    let n = u16::try_from(d.spis.len())
                        .map_err(|_| invalid("delete", "more than 65535 SPIs"))?;
                    out.push(4);
                    out.extend_from_slice(&n.to_be_bytes());
                    for s in &d.spis {
                        out.extend_from_slice(&s.0.to_be_bytes());
                    }
                }
                p => {
                    return Err(invalid(
                        "delete",
                        format!("protocol {} with {} SPIs", p.to_u8(), d.spis.len()),
                    ))
                }
            }
        }
        Payload::VendorId(v) => out.extend_from_slice(v),
        Payload::TsI(ts) | Payload::TsR(ts) => {
            let n = u8::try_from(ts.len()).map_err(|_| invalid("TS", "more than 255 selectors"))?;
            out.push(n);
            out.extend_from_slice(&[0, 0, 0]);
            for s in ts {
                match (s.start, s.end) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        out.push(ts_type::IPV4_ADDR_RANGE);
                        out.push(s.protocol);
                        out.extend_from_slice(&16u16.to_be_bytes());
                        out.extend_from_slice(&s.start_port.to_be_bytes());
                        out.extend_from_slice(&s.end_port.to_be_bytes());
                        out.extend_from_slice(&a.octets());
                        out.extend_from_slice(&b.octets());
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        out.push(ts_type::IPV6_ADDR_RANGE);
                        out.push(s.protocol);
                        out.extend_from_slice(&40u16.to_be_bytes());
                        out.extend_from_slice(&s.start_port.to_be_bytes());
                        out.extend_from_slice(&s.end_port.to_be_bytes());
                        out.extend_from_slice(&a.octets());
                        out.extend_from_slice(&b.octets());
                    }
                    _ => return Err(invalid("traffic selector", "mixed address families")),
                }
            }
        }
        Payload::Sk { body, .. } => out.extend_from_slice(body),
        Payload::Skf {
            number,
            total,
            body,
            ..
        } => {
            out.extend_from_slice(&number.to_be_bytes());
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(body);
        }
        Payload::Cfg { kind, attributes } => {
            out.push(kind.to_u8());
            out.extend_from_slice(&[0, 0, 0]);
            for a in attributes {
                out.extend_from_slice(&(a.kind & 0x7fff).to_be_bytes());
                let len = u16::try_from(a.value.len())
                    .map_err(|_| invalid("configuration attribute", "too long"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&a.value);
            }
        }
        Payload::Unknown { body, .. } => out.extend_from_slice(body),
    }
    Ok(())
}

fn encode_identity(id: &Identity, out: &mut Vec<u8>) {
    let (t, data): (u8, &[u8]) = match id {
        Identity::Ipv4(a) => {
            out.extend_from_slice(&[id_type::IPV4_ADDR, 0, 0, 0]);
            out.extend_from_slice(&a.octets());
            return;
        }
        Identity::Ipv6(a) => {
            out.extend_from_slice(&[id_type::IPV6_ADDR, 0, 0, 0]);
            out.extend_from_slice(&a.octets());
            return;
        }
        Identity::Fqdn(s) => (id_type::FQDN, s.as_bytes()),
        Identity::Rfc822(s) => (id_type::RFC822_ADDR, s.as_bytes()),
        Identity::DerAsn1Dn(d) => (id_type::DER_ASN1_DN, d),
        Identity::KeyId(k) => (id_type::KEY_ID, k),
    };
    out.extend_from_slice(&[t, 0, 0, 0]);
    out.extend_from_slice(data);
}
