//! Answering one query from a [`Snapshot`]: the authoritative logic (RFC 1034 section
//! 4.3.2 without delegations, RFC 2308 negative answers, RFC 6891 EDNS(0)) and the
//! hickory-server [`RequestHandler`] built on it.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder, Queries};

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

/// True when the first question's name is plain labels, without compression pointers
/// or extended label types. A query has nothing before its question a pointer could
/// legitimately refer to, and echoing such a question (hickory echoes the question
/// bytes verbatim) would point into our own header: treated as FORMERR.
pub(crate) fn question_is_plain(query: &[u8]) -> bool {
    let mut i = 12;
    loop {
        match query.get(i) {
            None => return true, // short: the parser reports it
            Some(0) => return true,
            Some(&len) if len & 0xc0 != 0 => return false,
            Some(&len) => i += 1 + usize::from(len),
        }
    }
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
    xfr: Arc<crate::xfr::Transfer>,
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
            xfr: Arc::default(),
        }
    }

    /// Serve zone transfers and signed queries with these keys and secondaries (without
    /// it every transfer is REFUSED and every TSIG is BADKEY).
    pub fn with_transfer(mut self, xfr: Arc<crate::xfr::Transfer>) -> DnsHandler {
        self.xfr = xfr;
        self
    }

    /// Transfer keys, secondaries and counters.
    pub fn transfer(&self) -> &Arc<crate::xfr::Transfer> {
        &self.xfr
    }

    /// A zone transfer or a signed message, answered with one message (the first of a
    /// transfer over TCP: the TCP server sends them all through [`RequestHandler`]).
    fn handle_xfr(
        &self,
        req: &MessageRequest,
        query: &[u8],
        src: SocketAddr,
        tcp: bool,
        shard: &Shard,
        out: &mut Vec<u8>,
    ) -> bool {
        let snap = self.zone.guard();
        let a = self.xfr.answer(&snap, req, query, src, tcp, self.edns_size);
        let max = if tcp {
            u16::MAX
        } else {
            match &req.edns {
                Some(e) => e.max_payload().clamp(512, self.edns_size),
                None => 512,
            }
        };
        // (the transfer code already fits UDP answers, setting TC itself when needed)
        let encoded = a
            .msgs
            .first()
            .map(|m| crate::xfr::encode(req, m, a.edns.as_ref(), max, out));
        match encoded {
            Some(Ok(_)) if out.len() <= usize::from(max) => {
                let tc = out.get(2).is_some_and(|b| b & 0x02 != 0);
                shard.count(a.outcome, tcp, tc);
            }
            _ => {
                header_only_error(query, 2, out);
                shard.count(Outcome::ServFail, tcp, false);
            }
        }
        true
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
        if query.len() > MAX_QUERY {
            header_only_error(query, 1, out);
            shard.count(Outcome::FormErr, tcp, false);
            return true;
        }
        self.handle_checked(query, src, tcp, shard, out, true)
    }

    /// After the drop checks: the fast path (when `fast`), else the general path.
    pub(crate) fn handle_checked(
        &self,
        query: &[u8],
        src: SocketAddr,
        tcp: bool,
        shard: &Shard,
        out: &mut Vec<u8>,
        fast: bool,
    ) -> bool {
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        if fast {
            let snap = self.zone.guard();
            if let Some(f) = crate::fast::answer(&snap, query, tcp, self.edns_size, out) {
                shard.count(f.outcome, tcp, false);
                return true;
            }
        }
        if !question_is_plain(query) {
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
        if crate::xfr::wants(&req) {
            return self.handle_xfr(&req, query, src, tcp, shard, out);
        }
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
            Ok(false) => {
                shard.count(reply.outcome, tcp, false);
                true
            }
            Ok(true) => {
                // Too big for UDP: header, question and OPT only, TC=1 (RFC 6891 section
                // 7 keeps the OPT; RFC 2181 section 9), so the client retries over TCP.
                let empty = Reply {
                    metadata: reply.metadata,
                    answers: [NO_RECORDS, NO_RECORDS],
                    authority: NO_RECORDS,
                    additional: NO_RECORDS,
                    edns: reply.edns.clone(),
                    outcome: reply.outcome,
                };
                if encode(&req, &empty, max, out).is_err() || out.len() < 12 {
                    header_only_error(query, 2, out);
                    shard.count(Outcome::ServFail, tcp, false);
                    return true;
                }
                out[2] |= 0x02;
                shard.count(reply.outcome, tcp, true);
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
        if crate::xfr::wants(request) && question_is_plain(request.as_slice()) {
            let a = self.xfr.answer(
                &snap,
                request,
                request.as_slice(),
                request.src(),
                tcp,
                self.edns_size,
            );
            let header = Header {
                metadata: a.msgs.first().map_or(request.metadata, |m| m.metadata),
                counts: HeaderCounts::default(),
            };
            return match crate::xfr::send(request, &a, &mut response_handle).await {
                Ok(()) => {
                    self.tcp_shard.count(a.outcome, tcp, false);
                    ResponseInfo::from(header)
                }
                Err(error) => {
                    tracing::debug!(%error, "sending DNS transfer failed");
                    self.tcp_shard.count(Outcome::ServFail, tcp, false);
                    ResponseInfo::from(servfail_header(request))
                }
            };
        }
        let mut reply = respond(&snap, request, self.edns_size);
        let no_queries;
        let mut queries = &request.queries;
        if !question_is_plain(request.as_slice()) {
            reply = Reply::new(request).rcode(ResponseCode::FormErr, Outcome::FormErr);
            no_queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok();
            match &no_queries {
                Some(q) => queries = q,
                None => return ResponseInfo::from(servfail_header(request)),
            }
        }
        let outcome = reply.outcome;
        let msg = MessageResponseBuilder::new(queries, reply.edns.as_ref()).build(
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
                ResponseInfo::from(servfail_header(request))
            }
        }
    }
}

fn servfail_header(request: &Request) -> Header {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = ResponseCode::ServFail;
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DnsConfig, NsConfig};
    use crate::gateway_id::GatewayId;
    use crate::zone::{PoolMember, TunnelKey, ZoneConfig};
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData};
    use std::net::IpAddr;

    const DOMAIN: &str = "vpn.example.com.";

    fn cfg() -> DnsConfig {
        DnsConfig {
            ns: vec![
                NsConfig {
                    name: "ns1".into(),
                    addrs: vec!["192.0.2.1".parse().unwrap()],
                },
                NsConfig {
                    name: "ns2".into(),
                    addrs: vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
                },
                NsConfig {
                    name: "ns.outside.example.net".into(),
                    addrs: vec![],
                },
            ],
            ttl: 7,
            negative_ttl: 9,
            ..DnsConfig::default()
        }
    }

    fn handler() -> DnsHandler {
        let zone = Zone::new(ZoneConfig::new(&cfg(), DOMAIN).unwrap());
        zone.set_synced(true);
        zone.upsert(
            TunnelKey::new("m1", "t1"),
            GatewayId::from_identity("Router.One").0,
            vec!["10.1.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            1 << 16,
        );
        zone.upsert(
            TunnelKey::new("m1", "t2"),
            GatewayId::from_identity("v4only").0,
            vec!["10.1.0.2".parse().unwrap()],
            2 << 16,
        );
        zone.set_pool(vec![
            PoolMember {
                addr: "198.51.100.1".parse().unwrap(),
                up: true,
                load: 50,
                capacity: 100,
            },
            PoolMember {
                addr: "198.51.100.2".parse().unwrap(),
                up: true,
                load: 1,
                capacity: 100,
            },
            PoolMember {
                addr: "198.51.100.3".parse().unwrap(),
                up: false,
                load: 0,
                capacity: 100,
            },
        ]);
        DnsHandler::new(zone, 1232)
    }

    fn src() -> SocketAddr {
        "127.0.0.1:5300".parse().unwrap()
    }

    fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn ask_bytes(h: &DnsHandler, q: &[u8], tcp: bool) -> Option<Message> {
        let shard = h.counters().shard();
        let mut out = Vec::new();
        h.handle_bytes(q, src(), tcp, &shard, &mut out)
            .then(|| Message::from_vec(&out).unwrap())
    }

    fn ask(h: &DnsHandler, name: &str, qtype: RecordType) -> Message {
        ask_bytes(h, &query_bytes(name, qtype, Some(1232)), false).unwrap()
    }

    fn ips(records: &[Record]) -> Vec<IpAddr> {
        records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn assert_soa_authority(m: &Message, ttl: u32) {
        assert_eq!(m.authorities.len(), 1, "{m:?}");
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].ttl, ttl);
    }

    #[test]
    fn a_and_aaaa_of_a_gateway_id_are_authoritative_without_recursion() {
        let h = handler();
        let m = ask(&h, "router-one.vpn.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(!m.metadata.recursion_available);
        assert!(m.metadata.recursion_desired, "RD is copied");
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(ips(&m.answers), vec!["10.1.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.answers[0].ttl, 7);
        assert!(m.edns.is_some(), "EDNS answered with EDNS");
        let m = ask(&h, "router-one.vpn.example.com.", RecordType::AAAA);
        assert_eq!(ips(&m.answers), vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        let m = ask(&h, "router-one.vpn.example.com.", RecordType::ANY);
        assert_eq!(m.answers.len(), 2);
    }

    #[test]
    fn names_match_case_insensitively_and_the_question_case_is_echoed() {
        let h = handler();
        let m = ask(&h, "ROUTER-One.VPN.Example.COM.", RecordType::A);
        assert_eq!(ips(&m.answers), vec!["10.1.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "ROUTER-One.VPN.Example.COM."
        );
    }

    #[test]
    fn unknown_name_is_nxdomain_with_soa_and_negative_ttl() {
        let h = handler();
        let m = ask(&h, "nobody.vpn.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m, 9);
        let RData::SOA(soa) = &m.authorities[0].data else {
            panic!("not SOA")
        };
        assert_eq!(soa.minimum, 9);
        // below an existing gateway name: no such name either
        let m = ask(&h, "x.router-one.vpn.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // a wildcard-looking label is just a name that does not exist
        let m = ask(&h, "*.vpn.example.com.", RecordType::SOA);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn known_name_missing_type_is_nodata() {
        let h = handler();
        let m = ask(&h, "v4only.vpn.example.com.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m, 9);
        let m = ask(&h, "router-one.vpn.example.com.", RecordType::MX);
        assert!(m.answers.is_empty());
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let m = ask(&h, "vpn.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_soa_authority(&m, 9);
    }

    #[test]
    fn soa_at_apex_carries_the_serial_and_timers() {
        let h = handler();
        let m = ask(&h, "vpn.example.com.", RecordType::SOA);
        assert_eq!(m.answers.len(), 1);
        let RData::SOA(soa) = &m.answers[0].data else {
            panic!("not SOA")
        };
        assert_eq!(soa.serial, h.zone().serial());
        assert_eq!(
            (soa.refresh, soa.retry, soa.expire, soa.minimum),
            (3600, 600, 86400, 9)
        );
        assert_eq!(soa.mname.to_ascii(), "ns1.vpn.example.com.");
        assert_eq!(soa.rname.to_ascii(), "hostmaster.vpn.example.com.");
    }

    #[test]
    fn ns_lists_every_member_with_in_zone_glue() {
        let h = handler();
        let m = ask(&h, "vpn.example.com.", RecordType::NS);
        let mut ns: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(n) => Some(n.0.to_ascii()),
                _ => None,
            })
            .collect();
        ns.sort();
        assert_eq!(
            ns,
            vec![
                "ns.outside.example.net.",
                "ns1.vpn.example.com.",
                "ns2.vpn.example.com."
            ]
        );
        let glue: Vec<String> = m.additionals.iter().map(|r| r.name.to_ascii()).collect();
        assert_eq!(ips(&m.additionals).len(), 3, "{glue:?}");
        assert!(glue.iter().all(|n| n.ends_with("vpn.example.com.")));
        // in-zone NS hosts answer their addresses authoritatively
        let m = ask(&h, "ns2.vpn.example.com.", RecordType::AAAA);
        assert_eq!(
            ips(&m.answers),
            vec!["2001:db8::2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn outside_the_zone_is_refused() {
        let h = handler();
        for name in ["example.com.", "www.example.org.", "."] {
            let m = ask(&h, name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(!m.metadata.authoritative);
            assert!(m.answers.is_empty());
        }
        let m = ask(&h, "vpn.example.com.", RecordType::AXFR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn pool_gives_up_members_least_loaded_first() {
        let h = handler();
        let m = ask(&h, "pool.vpn.example.com.", RecordType::A);
        let got = ips(&m.answers);
        let want: Vec<IpAddr> = vec![
            "198.51.100.2".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        ];
        assert_eq!(got, want);
        h.zone().set_pool(vec![]);
        let m = ask(&h, "pool.vpn.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(
            m.answers.is_empty(),
            "no member up: NODATA, never a down member"
        );
    }

    #[test]
    fn not_synced_is_servfail_never_nxdomain() {
        let h = handler();
        h.zone().set_synced(false);
        for name in ["router-one.vpn.example.com.", "nobody.vpn.example.com."] {
            let m = ask(&h, name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
        }
        let m = ask(&h, "www.example.org.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        h.zone().set_synced(true);
        let m = ask(&h, "nobody.vpn.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn removal_stops_answers_at_once_and_upsert_answers_at_once() {
        let h = handler();
        let k = TunnelKey::new("m2", "new");
        let t0 = std::time::Instant::now();
        h.zone().upsert(
            k.clone(),
            GatewayId::from_identity("fresh").0,
            vec!["10.9.9.9".parse().unwrap()],
            5 << 16,
        );
        let m = ask(&h, "fresh.vpn.example.com.", RecordType::A);
        assert!(t0.elapsed() < std::time::Duration::from_millis(10));
        assert_eq!(ips(&m.answers), vec!["10.9.9.9".parse::<IpAddr>().unwrap()]);
        h.zone().remove(&k, 6 << 16);
        let m = ask(&h, "fresh.vpn.example.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn edns_version_above_zero_is_badvers() {
        let h = handler();
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("vpn.example.com.").unwrap(),
            RecordType::SOA,
        ));
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let r = ask_bytes(&h, &m.to_vec().unwrap(), false).unwrap();
        // BADVERS is 16 (RFC 6891 6.1.3): high bits in OPT, low bits in the header
        assert_eq!(
            (
                r.metadata.response_code.high(),
                r.metadata.response_code.low()
            ),
            (1, 0)
        );
        assert!(r.edns.is_some());
        assert!(r.answers.is_empty());
    }

    #[test]
    fn opcode_other_than_query_is_notimp_and_two_questions_formerr() {
        let h = handler();
        let mut m = Message::new(7, MessageType::Query, OpCode::Status);
        m.add_query(Query::query(
            Name::from_ascii("vpn.example.com.").unwrap(),
            RecordType::SOA,
        ));
        let r = ask_bytes(&h, &m.to_vec().unwrap(), false).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("vpn.example.com.").unwrap(),
            RecordType::SOA,
        ));
        m.add_query(Query::query(
            Name::from_ascii("vpn.example.com.").unwrap(),
            RecordType::NS,
        ));
        let r = ask_bytes(&h, &m.to_vec().unwrap(), false).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        let c = h.counters().values();
        assert_eq!(c.get(Outcome::NotImp), 1);
        assert_eq!(c.get(Outcome::FormErr), 1);
    }

    #[test]
    fn large_answer_is_truncated_over_udp_and_complete_over_tcp() {
        let zone = Zone::new(ZoneConfig::new(&cfg(), DOMAIN).unwrap());
        zone.set_synced(true);
        let addrs: Vec<IpAddr> = (0..100u8).map(|i| IpAddr::from([10, 2, 0, i])).collect();
        zone.upsert(
            TunnelKey::new("m", "big"),
            GatewayId::from_identity("big").0,
            addrs,
            1 << 16,
        );
        let h = DnsHandler::new(zone, 1232);
        // no EDNS: 512 octets at most
        let q = query_bytes("big.vpn.example.com.", RecordType::A, None);
        let shard = h.counters().shard();
        let mut out = Vec::new();
        assert!(h.handle_bytes(&q, src(), false, &shard, &mut out));
        assert!(out.len() <= 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation);
        // EDNS 1232
        let q = query_bytes("big.vpn.example.com.", RecordType::A, Some(4096));
        assert!(h.handle_bytes(&q, src(), false, &shard, &mut out));
        assert!(out.len() <= 1232, "clamped to our edns_udp_size");
        assert!(Message::from_vec(&out).unwrap().metadata.truncation);
        // TCP: everything
        assert!(h.handle_bytes(&q, src(), true, &shard, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
        assert_eq!(h.counters().values().truncated, 2);
    }

    #[test]
    fn hostile_messages_are_formerr_or_dropped_and_counted() {
        let h = handler();
        let shard = h.counters().shard();
        let mut out = Vec::new();
        // shorter than a header: dropped
        assert!(!h.handle_bytes(&[1, 2, 3], src(), false, &shard, &mut out));
        // a response: dropped
        let mut resp = query_bytes("vpn.example.com.", RecordType::A, None);
        resp[2] |= 0x80;
        assert!(!h.handle_bytes(&resp, src(), false, &shard, &mut out));
        // source port 0: dropped
        let q = query_bytes("vpn.example.com.", RecordType::A, None);
        assert!(!h.handle_bytes(&q, "127.0.0.1:0".parse().unwrap(), false, &shard, &mut out));
        // truncated question
        let formerr = |bytes: &[u8], out: &mut Vec<u8>| {
            assert!(h.handle_bytes(bytes, src(), false, &shard, out));
            let m = Message::from_vec(out).unwrap();
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::FormErr,
                "{bytes:02x?}"
            );
            assert_eq!(m.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
        };
        formerr(&q[..q.len() - 3], &mut out);
        // compression loop: the name points to itself
        let mut lp = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        formerr(&lp, &mut out);
        // label longer than 63
        let mut long = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 64];
        long.extend_from_slice(&[b'a'; 64]);
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        formerr(&long, &mut out);
        // name longer than 255
        let mut big = vec![0x12, 0x35, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            big.push(63);
            big.extend_from_slice(&[b'b'; 63]);
        }
        big.extend_from_slice(&[0, 0, 1, 0, 1]);
        formerr(&big, &mut out);
        // oversized
        let mut huge = q.clone();
        huge.resize(MAX_QUERY + 1, 0);
        formerr(&huge, &mut out);
        // garbage counts claiming 65535 questions
        formerr(
            &[
                9, 9, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
            ],
            &mut out,
        );
        let c = h.counters().values();
        assert_eq!(c.get(Outcome::DropShort), 1);
        assert_eq!(c.get(Outcome::DropResponse), 1);
        assert_eq!(c.get(Outcome::DropSource), 1);
        assert_eq!(c.get(Outcome::FormErr), 6);
    }

    /// The fast path answers exactly what the general path answers.
    #[test]
    fn fast_path_matches_general_path() {
        let h = handler();
        let shard = h.counters().shard();
        let names = [
            "router-one.vpn.example.com.",
            "ROUTER-ONE.Vpn.Example.com.",
            "v4only.vpn.example.com.",
            "nobody.vpn.example.com.",
            "x.router-one.vpn.example.com.",
            "pool.vpn.example.com.",
            "ns2.vpn.example.com.",
            "vpn.example.com.",
            "example.com.",
            "other.example.org.",
        ];
        let types = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::SOA,
        ];
        let mut fast_hits = 0;
        for n in names {
            for t in types {
                for edns in [None, Some(512), Some(1232), Some(4096)] {
                    for tcp in [false, true] {
                        let q = query_bytes(n, t, edns);
                        let (mut a, mut b) = (Vec::new(), Vec::new());
                        assert!(h.handle_checked(&q, src(), tcp, &shard, &mut a, true));
                        assert!(h.handle_checked(&q, src(), tcp, &shard, &mut b, false));
                        let snap = h.zone().guard();
                        let mut scratch = Vec::new();
                        if crate::fast::answer(&snap, &q, tcp, 1232, &mut scratch).is_some() {
                            fast_hits += 1;
                        }
                        let (ma, mb) = (
                            Message::from_vec(&a).unwrap(),
                            Message::from_vec(&b).unwrap(),
                        );
                        assert_eq!(ma, mb, "{n} {t} {edns:?} tcp={tcp}");
                    }
                }
            }
        }
        assert!(fast_hits > 100, "{fast_hits}");
    }

    /// Deterministic smoke fuzz: mutations of valid queries and random bytes never
    /// panic, and every reply is a well-formed DNS response with the query's ID.
    #[test]
    fn smoke_fuzz_never_panics_and_always_answers_a_parsable_response() {
        let h = handler();
        let shard = h.counters().shard();
        let mut out = Vec::new();
        let seeds: Vec<Vec<u8>> = vec![
            query_bytes("router-one.vpn.example.com.", RecordType::A, Some(1232)),
            query_bytes("vpn.example.com.", RecordType::NS, None),
            query_bytes("pool.vpn.example.com.", RecordType::ANY, Some(512)),
            query_bytes("nobody.vpn.example.com.", RecordType::AAAA, None),
        ];
        // xorshift64*: fixed seed, reproducible
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut answered = 0;
        for i in 0..200_000u32 {
            let mut msg = if i % 10 == 0 {
                let len = (next() % 600) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                seeds[(next() % seeds.len() as u64) as usize].clone()
            };
            let flips = 1 + next() % 8;
            for _ in 0..flips {
                if msg.is_empty() {
                    break;
                }
                let pos = (next() % msg.len() as u64) as usize;
                match next() % 4 {
                    0 => msg[pos] = next() as u8,
                    1 => msg[pos] ^= 1 << (next() % 8),
                    2 => msg.truncate(pos),
                    _ => msg.insert(pos, 0xc0),
                }
            }
            let tcp = i % 7 == 0;
            if h.handle_bytes(&msg, src(), tcp, &shard, &mut out) {
                answered += 1;
                assert!(out.len() >= 12);
                assert_eq!(out[..2], msg[..2], "ID echoed");
                assert!(out[2] & 0x80 != 0, "QR set");
                if !tcp {
                    assert!(out.len() <= 1232);
                }
                if let Err(e) = Message::from_vec(&out) {
                    panic!("{e}: query {msg:02x?} -> response {out:02x?}");
                }
            }
        }
        assert!(answered > 100_000, "{answered}");
    }
}
