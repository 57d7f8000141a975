//! TSIG (RFC 8945): verifying signed requests and signing responses and NOTIFYs with
//! HMAC-SHA256/384/512. The HMAC itself is ring's; this module only assembles the
//! octets the MAC covers (RFC 8945 section 4.3) from hickory's wire types.

use std::sync::Arc;

use hickory_proto::op::Header;
use hickory_proto::rr::rdata::tsig::{make_tsig_record, TsigAlgorithm, TsigError, TSIG};
use hickory_proto::rr::{DNSClass, Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use ring::hmac;

use crate::config::{TsigAlgorithmName, TsigKeyConfig};
use crate::error::Error;

/// Fudge we put in what we sign, and accept at most in what we verify (RFC 8945 section
/// 10 recommends 300 seconds).
pub const FUDGE: u16 = 300;

/// One shared secret (RFC 8945 section 4.1), from `[[dns.tsig_key]]`.
pub struct TsigKey {
    name: Name,
    algorithm: TsigAlgorithm,
    key: hmac::Key,
    mac_len: usize,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TsigKey {
    /// Build a key from its configuration.
    pub fn new(cfg: &TsigKeyConfig) -> Result<TsigKey, Error> {
        let mut name =
            Name::from_ascii(cfg.name.trim_end_matches('.')).map_err(|e| Error::InvalidName {
                name: cfg.name.clone(),
                reason: e.to_string(),
            })?;
        name.set_fqdn(true);
        if cfg.secret.0.is_empty() {
            return Err(Error::Config(format!(
                "tsig_key {:?}: secret is empty",
                cfg.name
            )));
        }
        let (algorithm, alg) = match cfg.algorithm {
            TsigAlgorithmName::HmacSha256 => (TsigAlgorithm::HmacSha256, hmac::HMAC_SHA256),
            TsigAlgorithmName::HmacSha384 => (TsigAlgorithm::HmacSha384, hmac::HMAC_SHA384),
            TsigAlgorithmName::HmacSha512 => (TsigAlgorithm::HmacSha512, hmac::HMAC_SHA512),
        };
        Ok(TsigKey {
            name: name.to_lowercase(),
            algorithm,
            mac_len: alg.digest_algorithm().output_len(),
            key: hmac::Key::new(alg, &cfg.secret.0),
        })
    }

    /// The key name (lowercase, fully qualified).
    pub fn name(&self) -> &Name {
        &self.name
    }
}

/// The TSIG RR found at the end of a received message.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Owner name: the key name.
    pub(crate) name: Name,
    pub(crate) tsig: TSIG,
    /// Offset of the TSIG RR in the message.
    pub(crate) offset: usize,
}

/// Why a signed message was rejected (RFC 8945 section 5.2), with what the error
/// response needs.
#[derive(Debug)]
#[allow(clippy::enum_variant_names)] // the RFC's names
pub(crate) enum Rejected {
    /// Unknown key name or algorithm: NOTAUTH/BADKEY, unsigned.
    BadKey {
        name: Name,
        algorithm: TsigAlgorithm,
    },
    /// MAC does not verify (or truncated): NOTAUTH/BADSIG, unsigned.
    BadSig { key: Arc<TsigKey> },
    /// Time signed outside the fudge window: NOTAUTH/BADTIME, signed, with our time.
    BadTime { key: Arc<TsigKey>, mac: Vec<u8> },
}

impl Rejected {
    pub(crate) fn error(&self) -> TsigError {
        match self {
            Rejected::BadKey { .. } => TsigError::BadKey,
            Rejected::BadSig { .. } => TsigError::BadSig,
            Rejected::BadTime { .. } => TsigError::BadTime,
        }
    }
}

/// Skip one (possibly compressed) name; returns the offset after it.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)?;
        match len & 0xc0 {
            0 if len == 0 => return Some(i + 1),
            0 => i += 1 + usize::from(len),
            0xc0 => return msg.get(i + 1).map(|_| i + 2),
            _ => return None,
        }
    }
}

/// Offset of the last RR of the message (where a TSIG must be), walking the sections
/// without interpreting them. None if the message is malformed or has no additional RR.
fn last_rr_offset(msg: &[u8]) -> Option<usize> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *msg.get(at)?,
            *msg.get(at + 1)?,
        ])))
    };
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    if ar == 0 {
        return None;
    }
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    for _ in 0..(an + ns + ar - 1) {
        i = skip_name(msg, i)? + 8;
        let rdlen = count(i)?;
        i += 2 + rdlen;
    }
    (i < msg.len()).then_some(i)
}

/// The TSIG RR of `msg` if its last additional RR is one. `Err(())`: a TSIG RR that is
/// malformed (FORMERR).
pub(crate) fn find(msg: &[u8], additionals: &[Record]) -> Result<Option<Received>, ()> {
    let last_is_tsig = additionals
        .last()
        .is_some_and(|r| matches!(r.data, RData::TSIG(_)));
    let others = additionals
        .iter()
        .rev()
        .skip(1)
        .any(|r| matches!(r.data, RData::TSIG(_)));
    if others {
        return Err(()); // RFC 8945 section 5.1: only one, and last
    }
    if !last_is_tsig {
        return Ok(None);
    }
    let offset = last_rr_offset(msg).ok_or(())?;
    let mut dec = BinDecoder::new(msg.get(offset..).ok_or(())?);
    let rec = Record::read(&mut dec).map_err(|_| ())?;
    match rec.data {
        RData::TSIG(tsig) if rec.dns_class == DNSClass::ANY && rec.ttl == 0 => {
            let mut name = rec.name;
            name.set_fqdn(true);
            Ok(Some(Received {
                name: name.to_lowercase(),
                tsig,
                offset,
            }))
        }
        _ => Err(()),
    }
}

/// The octets a MAC covers for a message signed with `t`:
/// `[prior MAC]`, the message without its TSIG (original ID, ARCOUNT - 1), then the
/// TSIG variables (first message) or only the timers (later messages of a transfer,
/// RFC 8945 section 5.3.1).
pub(crate) fn to_be_signed(
    prior_mac: Option<&[u8]>,
    unsigned: &[u8],
    key_name: &Name,
    t: &TSIG,
    timers_only: bool,
) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(unsigned.len() + 128);
    let mut enc = BinEncoder::new(&mut buf);
    if let Some(p) = prior_mac {
        enc.emit_u16(u16::try_from(p.len()).ok()?).ok()?;
        enc.emit_vec(p).ok()?;
    }
    enc.emit_vec(unsigned).ok()?;
    if timers_only {
        enc.emit_u16((t.time >> 32) as u16).ok()?;
        enc.emit_u32(t.time as u32).ok()?;
        enc.emit_u16(t.fudge).ok()?;
    } else {
        t.emit_tsig_for_mac(&mut enc, key_name).ok()?;
    }
    Some(buf)
}

/// `msg[..offset]` with the ID set to `oid` and ARCOUNT one less: the message as it was
/// before the TSIG RR was added.
pub(crate) fn strip(msg: &[u8], offset: usize, oid: u16) -> Option<Vec<u8>> {
    let mut dec = BinDecoder::new(msg);
    let mut h = Header::read(&mut dec).ok()?;
    h.metadata.id = oid;
    h.counts.additionals = h.counts.additionals.checked_sub(1)?;
    let mut out = Vec::with_capacity(offset);
    let mut enc = BinEncoder::new(&mut out);
    h.emit(&mut enc).ok()?;
    out.extend_from_slice(msg.get(12..offset)?);
    Some(out)
}

/// Verify the TSIG `r` of `msg` (RFC 8945 section 5.2: key, then MAC, then time) with a
/// key from `keys`. `prior_mac`: the request MAC when verifying a response. Returns
/// the key and the MAC (to chain the response to).
pub(crate) fn verify(
    keys: &[Arc<TsigKey>],
    msg: &[u8],
    r: &Received,
    prior_mac: Option<&[u8]>,
    now: u64,
) -> Result<(Arc<TsigKey>, Vec<u8>), Box<Rejected>> {
    let Some(key) = keys
        .iter()
        .find(|k| k.name == r.name && k.algorithm == r.tsig.algorithm)
    else {
        return Err(Box::new(Rejected::BadKey {
            name: r.name.clone(),
            algorithm: r.tsig.algorithm.clone(),
        }));
    };
    let bad_sig = || {
        Box::new(Rejected::BadSig {
            key: Arc::clone(key),
        })
    };
    // Truncated MACs are not accepted (RFC 8945 section 5.2.2.1 leaves it to policy).
    if r.tsig.mac.len() != key.mac_len {
        return Err(bad_sig());
    }
    let unsigned = strip(msg, r.offset, r.tsig.oid).ok_or_else(bad_sig)?;
    let tbv = to_be_signed(prior_mac, &unsigned, &r.name, &r.tsig, false).ok_or_else(bad_sig)?;
    hmac::verify(&key.key, &tbv, &r.tsig.mac).map_err(|_| bad_sig())?;
    let fudge = u64::from(r.tsig.fudge.min(FUDGE));
    if now.abs_diff(r.tsig.time) > fudge {
        return Err(Box::new(Rejected::BadTime {
            key: Arc::clone(key),
            mac: r.tsig.mac.clone(),
        }));
    }
    Ok((Arc::clone(key), r.tsig.mac.clone()))
}

/// A TSIG RR (class ANY, TTL 0) ready to append as the last additional record.
pub(crate) type TsigRecord = Box<Record<TSIG>>;

fn record(key_name: &Name, t: TSIG) -> TsigRecord {
    Box::new(make_tsig_record(key_name.clone(), t))
}

/// Sign one message: `unsigned` is the complete message without TSIG; returns the
/// TSIG RR to append and its MAC (the prior MAC of the next message of a transfer).
/// `prior_mac`: the request MAC (responses) or the previous message's MAC (later
/// messages of a transfer, with `later` set); None for requests (NOTIFY).
pub(crate) fn sign(
    key: &TsigKey,
    unsigned: &[u8],
    prior_mac: Option<&[u8]>,
    later: bool,
    now: u64,
    error: Option<TsigError>,
    other: Vec<u8>,
) -> Option<(TsigRecord, Vec<u8>)> {
    let oid = u16::from_be_bytes([*unsigned.first()?, *unsigned.get(1)?]);
    let t = TSIG::new(
        key.algorithm.clone(),
        now,
        FUDGE,
        Vec::new(),
        oid,
        error,
        other,
    );
    let tbs = to_be_signed(prior_mac, unsigned, &key.name, &t, later)?;
    let mac = hmac::sign(&key.key, &tbs).as_ref().to_vec();
    Some((record(&key.name, t.set_mac(mac.clone())), mac))
}

/// The unsigned TSIG RR of a BADKEY or BADSIG error response (RFC 8945 section 5.3.2).
pub(crate) fn unsigned_error(
    name: &Name,
    algorithm: TsigAlgorithm,
    oid: u16,
    now: u64,
    error: TsigError,
) -> TsigRecord {
    record(
        name,
        TSIG::new(
            algorithm,
            now,
            FUDGE,
            Vec::new(),
            oid,
            Some(error),
            Vec::new(),
        ),
    )
}

/// Our time as the 48-bit "Other Data" of a BADTIME response (RFC 8945 section 5.2.3).
pub(crate) fn time_other(now: u64) -> Vec<u8> {
    now.to_be_bytes()[2..].to_vec()
}

/// Append `tsig` to the encoded message `msg` (ARCOUNT + 1).
pub(crate) fn append(msg: &mut Vec<u8>, tsig: &Record<TSIG>) -> Option<()> {
    let ar = u16::from_be_bytes([*msg.get(10)?, *msg.get(11)?]).checked_add(1)?;
    let mut rr = Vec::with_capacity(128);
    let mut enc = BinEncoder::new(&mut rr);
    tsig.emit(&mut enc).ok()?;
    msg.extend_from_slice(&rr);
    msg[10..12].copy_from_slice(&ar.to_be_bytes());
    Some(())
}

/// Verify a response `msg` to a request we signed with `key` whose MAC was `request_mac`.
pub(crate) fn verify_response(
    key: &Arc<TsigKey>,
    msg: &[u8],
    request_mac: &[u8],
    now: u64,
) -> Result<(), String> {
    let m = hickory_proto::op::Message::from_vec(msg).map_err(|e| e.to_string())?;
    let r = find(msg, &m.additionals)
        .map_err(|()| "malformed TSIG".to_owned())?
        .ok_or_else(|| "response not signed".to_owned())?;
    if let Some(e) = r.tsig.error {
        return Err(format!("TSIG error {e:?}"));
    }
    verify(std::slice::from_ref(key), msg, &r, Some(request_mac), now)
        .map(|_| ())
        .map_err(|e| format!("TSIG {:?}", e.error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TsigSecret;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::RecordType;

    fn key(name: &str, secret: &[u8]) -> Arc<TsigKey> {
        Arc::new(
            TsigKey::new(&TsigKeyConfig {
                name: name.into(),
                algorithm: TsigAlgorithmName::HmacSha256,
                secret: TsigSecret(secret.to_vec()),
            })
            .unwrap(),
        )
    }

    fn signed_query(k: &TsigKey, now: u64) -> (Vec<u8>, Vec<u8>) {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.add_query(Query::query(
            Name::from_ascii("vpn.example.com.").unwrap(),
            RecordType::AXFR,
        ));
        let mut bytes = m.to_vec().unwrap();
        let (rr, mac) = sign(k, &bytes, None, false, now, None, Vec::new()).unwrap();
        append(&mut bytes, &rr).unwrap();
        (bytes, mac)
    }

    fn received(bytes: &[u8]) -> Received {
        let m = Message::from_vec(bytes).unwrap();
        find(bytes, &m.additionals).unwrap().unwrap()
    }

    #[test]
    fn a_signed_request_verifies_and_every_kind_of_tampering_is_rejected() {
        let k = key("xfr-key", b"0123456789abcdef0123456789abcdef");
        let (q, mac) = signed_query(&k, 1_000_000);
        let r = received(&q);
        let (got, m) = verify(&[Arc::clone(&k)], &q, &r, None, 1_000_010).unwrap();
        assert_eq!(got.name(), k.name());
        assert_eq!(m, mac);
        // the MAC covers the question
        let mut bad = q.clone();
        bad[20] ^= 0x20;
        let r = received(&bad);
        assert!(matches!(
            verify(&[Arc::clone(&k)], &bad, &r, None, 1_000_000),
            Err(e) if matches!(*e, Rejected::BadSig { .. })
        ));
        // another secret under the same name
        let other = key("xfr-key", b"another secret of the same length");
        let r = received(&q);
        assert!(matches!(
            verify(&[other], &q, &r, None, 1_000_000),
            Err(e) if matches!(*e, Rejected::BadSig { .. })
        ));
        // unknown key name
        let r = received(&q);
        let unknown = key("other-key", b"0123456789abcdef0123456789abcdef");
        assert!(matches!(
            verify(&[unknown], &q, &r, None, 1_000_000),
            Err(e) if matches!(*e, Rejected::BadKey { .. })
        ));
        // outside the fudge: BADTIME, carrying the MAC to sign the error with
        assert!(matches!(
            verify(&[Arc::clone(&k)], &q, &r, None, 1_000_000 + 301),
            Err(e) if matches!(*e, Rejected::BadTime { .. })
        ));
    }

    #[test]
    fn tsig_must_be_last_and_alone() {
        let k = key("k", b"secret-secret-secret");
        let (q, _) = signed_query(&k, 5);
        let m = Message::from_vec(&q).unwrap();
        let mut two = m.additionals.clone();
        two.insert(0, m.additionals[0].clone());
        assert!(find(&q, &two).is_err());
        assert!(find(&q, &[]).unwrap().is_none());
        // a truncated TSIG RR does not parse as a message at all; find never panics
        for n in 0..q.len() {
            let _ = find(&q[..n], &m.additionals);
        }
    }

    #[test]
    fn response_chain_verifies_with_the_request_mac() {
        let k = key("k", b"secret-secret-secret");
        let (q, qmac) = signed_query(&k, 77);
        let mut resp = q.clone();
        resp.truncate(received(&q).offset);
        resp[10..12].copy_from_slice(&0u16.to_be_bytes());
        resp[2] |= 0x80;
        let (rr, _) = sign(&k, &resp, Some(&qmac), false, 78, None, Vec::new()).unwrap();
        append(&mut resp, &rr).unwrap();
        verify_response(&k, &resp, &qmac, 80).unwrap();
        assert!(verify_response(&k, &resp, b"not the request mac", 80).is_err());
    }
}
