//! Answering one query from a [`Snapshot`]: the authoritative logic (RFC 1034 section
//! 4.3.2 without delegations, RFC 2308 negative answers, RFC 6891 EDNS(0)) and the
//! hickory-server [`RequestHandler`] built on it.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder};

use crate::metrics::{Counters, Outcome, Shard};
use crate::zone::{Fixed, Snapshot, Zone};

/// Largest query accepted (RFC 1035 section 4.2.1 allows 512 without EDNS; queries with
/// EDNS options and TSIG stay far below this). Larger messages are answered FORMERR.
pub const MAX_QUERY: usize = 4096;

const NO_RECORDS: &[Record] = &[];

/// A response in the making: slices borrowed from the snapshot, nothing copied.
pub(crate) struct Reply<'s> {
    pub(crate) metadata: Metadata,
    pub(crate) answers: [&'s [Record]; 2],
    pub(crate) authority: &'s [Record],
    pub(crate) additional: &'s [Record],
    pub(crate) edns: Option<Edns>,
    pub(crate) outcome: Outcome,
}

impl<'s> Reply<'s> {
    fn new(req: &MessageRequest) -> Reply<'s> {
        let mut metadata = Metadata::response_from_request(&req.metadata);
        metadata.recursion_available = false; // never recursive (issue 4)
        metadata.authentic_data = false;
        Reply {
            metadata,
            answers: [NO_RECORDS, NO_RECORDS],
            authority: NO_RECORDS,
            additional: NO_RECORDS,
            edns: None,
            outcome: Outcome::Answer,
        }
    }

    fn rcode(mut self, rcode: ResponseCode, outcome: Outcome) -> Reply<'s> {
        self.metadata.response_code = rcode;
        self.outcome = outcome;
        self
    }
}

/// Decide the answer to `req` from `snap`.
pub(crate) fn respond<'s>(snap: &'s Snapshot, req: &MessageRequest, edns_size: u16) -> Reply<'s> {
    let mut r = Reply::new(req);
    if let Some(req_edns) = &req.edns {
        let mut e = Edns::new();
        e.set_max_payload(edns_size.max(512));
        e.set_version(0);
        e.set_dnssec_ok(false);
        r.edns = Some(e);
        if req_edns.version() > 0 {
            return r.rcode(ResponseCode::BADVERS, Outcome::BadVers);
        }
    }
    if req.metadata.op_code != OpCode::Query {
        return r.rcode(ResponseCode::NotImp, Outcome::NotImp);
    }
    let queries = req.queries.queries();
    if queries.len() != 1 {
        // RFC 9619: QDCOUNT must be 1
        return r.rcode(ResponseCode::FormErr, Outcome::FormErr);
    }
    let q = &queries[0];
    lookup(snap, q.name(), q.query_type(), q.query_class(), r)
}

fn lookup<'s>(
    snap: &'s Snapshot,
    name: &LowerName,
    qtype: RecordType,
    qclass: DNSClass,
    mut r: Reply<'s>,
) -> Reply<'s> {
    let st = &snap.statics;
    if qclass != DNSClass::IN || !st.origin.zone_of(name) {
        return r.rcode(ResponseCode::Refused, Outcome::Refused);
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return r.rcode(ResponseCode::Refused, Outcome::Refused);
    }
    if !snap.synced {
        // Not yet caught up with the cluster: never deny a name exists (issue 4).
        return r.rcode(ResponseCode::ServFail, Outcome::ServFail);
    }
    r.metadata.authoritative = true;
    // count labels ourselves: num_labels() does not count a leading '*'
    let labels = name
        .iter()
        .count()
        .saturating_sub(usize::from(st.origin_labels));
    if labels == 0 {
        match qtype {
            RecordType::SOA => r.answers[0] = &snap.soa,
            RecordType::NS => {
                r.answers[0] = &st.ns;
                r.additional = &st.glue;
            }
            RecordType::ANY => {
                r.answers = [&snap.soa, &st.ns];
                r.additional = &st.glue;
            }
            _ => {}
        }
        return finish(snap, r);
    }

    let mut found = None;
    if labels == 1 {
        let label = name.iter().next().unwrap_or_default();
        if let Ok(key) = std::str::from_utf8(label) {
            match st.fixed.get(key) {
                Some(f) => found = Some(Found::Fixed(f)),
                None => {
                    if let Some(n) = snap.names.get(key) {
                        found = Some(Found::Name(n.as_ref()));
                    }
                }
            }
        }
    } else if st.any_multi_label_fixed {
        let n = labels;
        let rel: Vec<String> = name
            .iter()
            .take(n)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        if let Some(f) = st.fixed.get(&rel.join(".")) {
            found = Some(Found::Fixed(f));
        }
    }
    let recs = match found {
        None => {
            r.authority = &snap.soa;
            return r.rcode(ResponseCode::NXDomain, Outcome::NxDomain);
        }
        Some(Found::Fixed(Fixed::EmptyNonTerminal)) => return finish(snap, r),
        Some(Found::Fixed(Fixed::Pool)) => snap.pool.as_ref(),
        Some(Found::Fixed(Fixed::Host(h))) => h,
        Some(Found::Name(n)) => n,
    };
    match qtype {
        RecordType::A => r.answers[0] = &recs.a,
        RecordType::AAAA => r.answers[0] = &recs.aaaa,
        RecordType::ANY => r.answers = [&recs.a, &recs.aaaa],
        _ => {}
    }
    finish(snap, r)
}

enum Found<'s> {
    Fixed(&'s Fixed),
    Name(&'s crate::zone::NameRecords),
}

/// NOERROR: an answer, or NODATA with the SOA in the authority section (RFC 2308 2.2).
fn finish<'s>(snap: &'s Snapshot, mut r: Reply<'s>) -> Reply<'s> {
    if r.answers[0].is_empty() && r.answers[1].is_empty() {
        r.authority = &snap.soa;
        r.additional = NO_RECORDS;
        r.outcome = Outcome::NoData;
    }
    r
}

/// Write `reply` to `out` (cleared first), at most `max_size` octets: what does not fit
/// is left out and TC is set (RFC 2181 section 9). Returns whether it was truncated.
pub(crate) fn encode(
    req: &MessageRequest,
    reply: &Reply<'_>,
    max_size: u16,
    out: &mut Vec<u8>,
) -> Result<bool, hickory_proto::ProtoError> {
    out.clear();
    let mut enc = BinEncoder::new(out);
    enc.set_max_size(max_size);
    let msg = MessageResponseBuilder::new(&req.queries, reply.edns.as_ref()).build(
        reply.metadata,
        reply.answers[0].iter().chain(reply.answers[1].iter()),
        reply.authority.iter(),
        NO_RECORDS.iter(),
        reply.additional.iter(),
    );
    let info = msg.destructive_emit(&mut enc)?;
    Ok(info.truncation)
}

/// A bare 12-octet error response for a message whose header could be read but whose
/// body could not (FORMERR, RFC 1035 section 4.1.1), echoing ID, opcode and RD.
pub(crate) fn header_only_error(query: &[u8], rcode: u8, out: &mut Vec<u8>) {
    out.clear();
    if query.len() < 12 {
        return;
    }
    out.extend_from_slice(&query[..2]);
    // QR=1, opcode copied, AA=0, TC=0, RD copied
    out.push(0x80 | (query[2] & 0x78) | (query[2] & 0x01));
    out.push(rcode & 0x0f);
    out.extend_from_slice(&[0; 8]);
}

/// The query handler: reads the zone's current snapshot for each query (no lock) and
/// counts outcomes. Used by the UDP receive loops directly and by hickory-server's
/// [`hickory_server::Server`] for TCP through its [`RequestHandler`] implementation.
#[derive(Clone)]
pub struct DnsHandler {
    zone: Zone,
    edns_size: u16,
    counters: Arc<Counters>,
    tcp_shard: Arc<Shard>,
}

impl DnsHandler {
    /// A handler over `zone`; UDP answers to EDNS clients are at most `edns_size` octets.
    pub fn new(zone: Zone, edns_size: u16) -> DnsHandler {
        let counters = Arc::new(Counters::default());
        let tcp_shard = counters.shard();
        DnsHandler {
            zone,
            edns_size: edns_size.max(512),
            counters,
            tcp_shard,
        }
    }

    /// The zone answered from.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Counters of everything this handler saw.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Answer one message received over UDP (or TCP with `tcp`): the response is written
    /// to `out`; returns false when nothing must be sent (dropped, counted). Never
    /// panics, whatever the bytes.
    pub fn handle_bytes(
        &self,
        query: &[u8],
        src: SocketAddr,
        tcp: bool,
        shard: &Shard,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        if query.len() < 12 {
            shard.count(Outcome::DropShort, tcp, false);
            return false;
        }
        if query[2] & 0x80 != 0 {
            shard.count(Outcome::DropResponse, tcp, false);
            return false;
        }
        if src.port() == 0 || src.ip().is_unspecified() {
            shard.count(Outcome::DropSource, tcp, false);
            return false;
        }
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        if query.len() > MAX_QUERY {
            header_only_error(query, 1, out);
            shard.count(Outcome::FormErr, tcp, false);
            return true;
        }
        let req = match Request::from_bytes(query.to_vec(), src, protocol) {
            Ok(r) => r,
            Err(_) => {
                header_only_error(query, 1, out);
                shard.count(Outcome::FormErr, tcp, false);
                return true;
            }
        };
        let snap = self.zone.guard();
        let reply = respond(&snap, &req, self.edns_size);
        let max = if tcp {
            u16::MAX
        } else {
            match &req.edns {
                Some(e) => e.max_payload().clamp(512, self.edns_size),
                None => 512,
            }
        };
        match encode(&req, &reply, max, out) {
            Ok(truncated) => {
                shard.count(reply.outcome, tcp, truncated);
                true
            }
            Err(_) => {
                header_only_error(query, 2, out);
                shard.count(Outcome::ServFail, tcp, false);
                true
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let tcp = !matches!(request.protocol(), Protocol::Udp);
        let snap = self.zone.snapshot();
        let reply = respond(&snap, request, self.edns_size);
        let outcome = reply.outcome;
        let msg = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref()).build(
            reply.metadata,
            reply.answers[0].iter().chain(reply.answers[1].iter()),
            reply.authority.iter(),
            NO_RECORDS.iter(),
            reply.additional.iter(),
        );
        match response_handle.send_response(msg).await {
            Ok(info) => {
                self.tcp_shard.count(outcome, tcp, info.truncation);
                info
            }
            Err(error) => {
                tracing::debug!(%error, "sending DNS response failed");
                self.tcp_shard.count(Outcome::ServFail, tcp, false);
                let mut metadata = Metadata::new(
                    request.metadata.id,
                    MessageType::Response,
                    request.metadata.op_code,
                );
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
