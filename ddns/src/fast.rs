//! Fast path for the common query: one plain question of class IN for A or AAAA (or any
//! type, for NODATA / NXDOMAIN) below the apex, optionally one OPT record (EDNS version
//! 0). The response is assembled from wire-format records prepared when the snapshot was
//! built, with the owner name compressed to the question (RFC 1035 section 4.1.4).
//!
//! Anything else (apex, ANY, fixed names that are empty non-terminals, other opcodes,
//! EDNS version > 0, answers that would not fit) returns `None` and takes the general
//! path in [`crate::handler`], which is the reference: the unit tests run both paths and
//! compare.

use hickory_proto::rr::Record;
use hickory_proto::rr::{Name, RData};

use crate::metrics::Outcome;
use crate::zone::{Fixed, NameRecords, Snapshot};

/// Wire-format RRs of one RRset with owner = pointer to the question name (offset 12).
#[derive(Debug, Default, Clone)]
pub(crate) struct WireSet {
    pub(crate) count: u16,
    pub(crate) bytes: Vec<u8>,
}

impl WireSet {
    pub(crate) fn build(records: &[Record]) -> WireSet {
        let mut w = WireSet::default();
        for r in records {
            let (rtype, rdata): (u16, Vec<u8>) = match &r.data {
                RData::A(a) => (1, a.0.octets().to_vec()),
                RData::AAAA(a) => (28, a.0.octets().to_vec()),
                _ => continue,
            };
            w.bytes.extend_from_slice(&[0xc0, 12]);
            w.bytes.extend_from_slice(&rtype.to_be_bytes());
            w.bytes.extend_from_slice(&1u16.to_be_bytes());
            w.bytes.extend_from_slice(&r.ttl.to_be_bytes());
            w.bytes
                .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            w.bytes.extend_from_slice(&rdata);
            w.count += 1;
        }
        w
    }
}

/// The SOA RR without its owner (type onwards): the owner is a pointer to the apex
/// inside the question, which depends on the query.
pub(crate) fn soa_tail(
    name_mname: &Name,
    name_rname: &Name,
    fields: [u32; 5],
    ttl: u32,
) -> Vec<u8> {
    let mut rdata = Vec::new();
    put_name(&mut rdata, name_mname);
    put_name(&mut rdata, name_rname);
    for f in fields {
        rdata.extend_from_slice(&f.to_be_bytes());
    }
    let mut t = Vec::with_capacity(10 + rdata.len());
    t.extend_from_slice(&6u16.to_be_bytes());
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&ttl.to_be_bytes());
    t.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    t.extend_from_slice(&rdata);
    t
}

fn put_name(out: &mut Vec<u8>, n: &Name) {
    for label in n.iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
}

/// Lowercase wire form of the apex, for suffix comparison.
pub(crate) fn origin_wire(n: &Name) -> Vec<u8> {
    let mut v = Vec::new();
    put_name(&mut v, n);
    v.make_ascii_lowercase();
    v
}

pub(crate) struct Fast {
    pub(crate) outcome: Outcome,
}

/// Try to answer `q` from `snap` into `out`. `None`: use the general path.
pub(crate) fn answer(
    snap: &Snapshot,
    q: &[u8],
    tcp: bool,
    edns_size: u16,
    out: &mut Vec<u8>,
) -> Option<Fast> {
    // Header: QR=0, opcode 0, QD=1, AN=0, NS=0, AR<=1 (RFC 1035 4.1.1)
    if q.len() < 17 || q[2] & 0xf8 != 0 || q[4..10] != [0, 1, 0, 0, 0, 0] || q[10] != 0 || q[11] > 1
    {
        return None;
    }
    let has_opt = q[11] == 1;
    // Question name: plain labels, lowercase copy for lookup.
    let mut i = 12;
    let mut first_label: Option<(usize, usize)> = None;
    let mut labels = 0usize;
    loop {
        let len = usize::from(*q.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        if first_label.is_none() {
            first_label = Some((i + 1, i + 1 + len));
        }
        labels += 1;
        i += 1 + len;
        if i - 12 > 254 {
            return None;
        }
    }
    let name_end = i + 1; // after the root label
    let qtype = u16::from_be_bytes([*q.get(name_end)?, *q.get(name_end + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(name_end + 2)?, *q.get(name_end + 3)?]);
    let question_end = name_end + 4;
    if qclass != 1 || matches!(qtype, 255 | 252 | 251 | 41) {
        return None; // not IN, ANY/AXFR/IXFR/OPT: general path
    }
    // EDNS: exactly one OPT RR, root owner, version 0 (RFC 6891 6.1.2).
    let mut max = 512u16;
    if has_opt {
        let o = q.get(question_end..)?;
        if o.len() < 11 || o[0] != 0 || o[1..3] != [0, 41] || o[6] != 0 {
            return None;
        }
        let rdlen = usize::from(u16::from_be_bytes([o[9], o[10]]));
        if o.len() != 11 + rdlen {
            return None;
        }
        max = u16::from_be_bytes([o[3], o[4]]).clamp(512, edns_size);
    } else if q.len() != question_end {
        return None;
    }
    if tcp {
        max = u16::MAX;
    }

    let st = &snap.statics;
    let origin = &st.origin_wire;
    let qname = &q[12..name_end];
    // below the apex: at least one label more, suffix equal case-insensitively
    if qname.len() <= origin.len() || labels <= usize::from(st.origin_labels) {
        return None; // apex or outside: general path (REFUSED / apex answers)
    }
    let suffix_at = qname.len() - origin.len();
    if !qname[suffix_at..].eq_ignore_ascii_case(origin) {
        return None;
    }
    // the suffix must start on a label boundary
    let mut j = 0;
    while j < suffix_at {
        j += 1 + usize::from(qname[j]);
    }
    if j != suffix_at {
        return None;
    }
    if !snap.synced {
        return None;
    }
    let rel_labels = labels - usize::from(st.origin_labels);
    let recs: Option<&NameRecords> = if rel_labels == 1 {
        let (s, e) = first_label?;
        let mut buf = [0u8; 63];
        let label = q.get(s..e)?;
        let lower = buf.get_mut(..label.len())?;
        lower.copy_from_slice(label);
        lower.make_ascii_lowercase();
        let key = std::str::from_utf8(lower).ok()?;
        match st.fixed.get(key) {
            Some(Fixed::Host(h)) => Some(h),
            Some(Fixed::Pool) => Some(snap.pool.as_ref()),
            Some(Fixed::EmptyNonTerminal) => return None,
            None => snap.names.get(key).map(|n| n.as_ref()),
        }
    } else if st.any_multi_label_fixed {
        return None;
    } else {
        None
    };

    out.clear();
    out.extend_from_slice(&q[..2]);
    // QR=1, opcode 0, AA=1, TC=0, RD copied; RA=0, Z=0, AD=0, CD copied
    out.push(0x84 | (q[2] & 0x01));
    let (rcode, outcome, answers, authority) = match recs {
        None => (3u8, Outcome::NxDomain, None, true),
        Some(r) => {
            let set = match qtype {
                1 => Some(&r.a_wire),
                28 => Some(&r.aaaa_wire),
                _ => None,
            };
            match set {
                Some(s) if s.count > 0 => (0, Outcome::Answer, Some(s), false),
                _ => (0, Outcome::NoData, None, true),
            }
        }
    };
    out.push((q[3] & 0x10) | rcode);
    let an = answers.map_or(0, |s| s.count);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&an.to_be_bytes());
    out.extend_from_slice(&[0, u8::from(authority), 0, u8::from(has_opt)]);
    out.extend_from_slice(&q[12..question_end]);
    if let Some(s) = answers {
        out.extend_from_slice(&s.bytes);
    }
    if authority {
        // owner: pointer to the apex inside the question
        let ptr = 0xc000u16 | (12 + suffix_at) as u16;
        out.extend_from_slice(&ptr.to_be_bytes());
        out.extend_from_slice(&snap.soa_tail);
    }
    if has_opt {
        out.push(0);
        out.extend_from_slice(&41u16.to_be_bytes());
        out.extend_from_slice(&edns_size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    if out.len() > usize::from(max) {
        return None; // general path truncates properly
    }
    Some(Fast { outcome })
}
