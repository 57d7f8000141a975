//! Receive offload towards the TUN device: decrypted inner packets are coalesced into
//! few TUN writes. Consecutive TCP segments of one flow (and UDP datagrams of one flow,
//! where the TUN device takes USO) become one super-packet described by a
//! `virtio_net_hdr` (GSO type, segment size, checksum left partial), so the kernel runs
//! its stack once per up to 64 KiB instead of once per packet. The packets stay where
//! decryption left them: each write is a gather list of the virtio header, the first
//! packet, and the payloads of the others (no copy in user space).
//!
//! The coalescing rules are the kernel's GRO rules (net/ipv4/tcp_offload.c,
//! `tcp_gro_receive`): only ACK segments (PSH allowed on the last), in sequence, with the
//! same ACK number, IP header fields and TCP options, none after a shorter one. The merged
//! packet is handed over with `NEEDS_CSUM`, which the kernel trusts. By default the
//! transport checksums of the merged packets are not verified first: every packet here
//! passed the ESP integrity check (RFC 4303 3.4.4), so no bit changed between the peer's
//! ESP layer and ours, which is the same reasoning by which Linux WireGuard hands its
//! decrypted packets up as `CHECKSUM_UNNECESSARY`. With `verify` (config
//! `verify_inner_checksums`) every packet's checksum is verified before merging and a
//! packet failing it is written on its own, for the kernel to check and drop.
use std::ops::Range;

/// Size of the virtio header in front of every TUN read and write with IFF_VNET_HDR.
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
/// Most segments in one write, and most octets (the IP length fields are 16 bits).
pub const MAX_SEGS: usize = 64;
const MAX_LEN: usize = 65535;
/// Writes gathered before a flush is required, and open writes searched per packet.
const MAX_ITEMS: usize = 128;
const SEARCH: usize = 8;

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// One packet in the caller's buffers: `bufs[buf][range]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub buf: usize,
    pub range: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// What the coalescing rules need from one packet.
#[derive(Debug, Clone, Copy)]
struct Seg {
    proto: Proto,
    v6: bool,
    /// IP header and transport header lengths.
    iph: usize,
    l4h: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

/// One TUN write being gathered.
#[derive(Debug)]
struct Item {
    first: Part,
    /// `None`: written as it is.
    seg: Option<Seg>,
    /// Payloads of the packets appended to `first`.
    more: Vec<Part>,
    total: usize,
    next_seq: u32,
    closed: bool,
    psh: bool,
    first_checked: bool,
    hdr: [u8; VNET_HDR_LEN],
}

/// Gathers decrypted packets into TUN writes; see the module documentation.
pub struct Coalescer {
    /// The device has IFF_VNET_HDR (a virtio header goes first in every write).
    vnet: bool,
    /// The device takes UDP segmentation offload (TUN_F_USO4/6).
    uso: bool,
    /// Verify each packet's transport checksum before merging it.
    verify: bool,
    items: Vec<Item>,
    n: usize,
}

impl Coalescer {
    pub fn new(vnet: bool, uso: bool, verify: bool) -> Self {
        Coalescer {
            vnet,
            uso,
            verify,
            items: (0..MAX_ITEMS)
                .map(|_| Item {
                    first: Part {
                        buf: 0,
                        range: 0..0,
                    },
                    seg: None,
                    more: Vec::with_capacity(MAX_SEGS),
                    total: 0,
                    next_seq: 0,
                    closed: false,
                    psh: false,
                    first_checked: false,
                    hdr: [0; VNET_HDR_LEN],
                })
                .collect(),
            n: 0,
        }
    }

    /// No room for another write: flush before the next push.
    pub fn full(&self) -> bool {
        self.n == self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Adds the packet `bufs[p.buf][p.range]` (a whole IP packet). Call [`full`] first.
    ///
    /// [`full`]: Self::full
    pub fn push<B: AsRef<[u8]>>(&mut self, bufs: &[B], p: Part) {
        let Some(pkt) = bufs
            .get(p.buf)
            .and_then(|b| b.as_ref().get(p.range.clone()))
        else {
            return;
        };
        let seg = if self.vnet {
            parse(pkt).filter(|s| s.proto == Proto::Tcp || self.uso)
        } else {
            None
        };
        if let Some(seg) = seg {
            let lo = self.n.saturating_sub(SEARCH);
            for i in (lo..self.n).rev() {
                let item = &self.items[i];
                let Some(head) = bufs
                    .get(item.first.buf)
                    .and_then(|b| b.as_ref().get(item.first.range.clone()))
                else {
                    continue;
                };
                let Some(iseg) = item.seg else { continue };
                if !same_flow(head, &iseg, pkt, &seg) {
                    continue;
                }
                if self.try_append(i, head, pkt, &seg, &p) {
                    return;
                }
                // Same flow but not adjacent: whatever follows must not jump ahead of it.
                self.items[i].closed = true;
                break;
            }
        }
        if self.full() {
            return;
        }
        let item = &mut self.items[self.n];
        self.n += 1;
        item.first = p;
        item.seg = seg;
        item.more.clear();
        item.total = pkt.len();
        item.next_seq = seg
            .map(|s| s.seq.wrapping_add(s.payload as u32))
            .unwrap_or(0);
        item.closed = seg.map(|s| s.psh).unwrap_or(true);
        item.psh = false;
        item.first_checked = false;
    }

    fn try_append(&mut self, i: usize, head: &[u8], pkt: &[u8], seg: &Seg, p: &Part) -> bool {
        let item = &self.items[i];
        let Some(iseg) = item.seg else { return false };
        if item.closed
            || item.more.len() + 1 >= MAX_SEGS
            || item.total + seg.payload > MAX_LEN
            || seg.payload > iseg.payload
            || seg.l4h != iseg.l4h
            || !ip_fields_match(head, pkt, seg.v6)
        {
            return false;
        }
        if seg.proto == Proto::Tcp {
            let (a, b) = (iseg.iph, seg.iph);
            if seg.seq != item.next_seq
                // ACK number and options (RFC 9293 3.1) must be those of the head.
                || head[a + 8..a + 12] != pkt[b + 8..b + 12]
                || head[a + 20..a + iseg.l4h] != pkt[b + 20..b + seg.l4h]
            {
                return false;
            }
        }
        if self.verify {
            if !item.first_checked {
                if !l4_checksum_ok(head, &iseg) {
                    // The head is written alone: the kernel checks it and drops it.
                    self.items[i].closed = true;
                    return false;
                }
                self.items[i].first_checked = true;
            }
            if !l4_checksum_ok(pkt, seg) {
                return false;
            }
        }
        let item = &mut self.items[i];
        let at = p.range.start + seg.iph + seg.l4h;
        item.more.push(Part {
            buf: p.buf,
            range: at..p.range.end,
        });
        item.total += seg.payload;
        item.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        if seg.payload < iseg.payload || seg.psh {
            item.closed = true;
        }
        item.psh |= seg.psh;
        true
    }

    /// Writes every gathered packet, in order, with `write(parts)` (one call per TUN
    /// write; the parts are the gather list). Rewrites the head packets' IP and
    /// transport headers for the merged length first. Returns the number of failed writes.
    pub fn flush<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        mut write: impl FnMut(&mut dyn Iterator<Item = &[u8]>) -> bool,
    ) -> usize {
        for item in &mut self.items[..self.n] {
            item.hdr = [0; VNET_HDR_LEN];
            let (Some(seg), false) = (item.seg, item.more.is_empty()) else {
                continue;
            };
            let Some(head) = bufs
                .get_mut(item.first.buf)
                .and_then(|b| b.as_mut().get_mut(item.first.range.clone()))
            else {
                continue;
            };
            finish_head(head, &seg, item.total, item.psh);
            let (gso_type, csum_offset) = match (seg.proto, seg.v6) {
                (Proto::Tcp, false) => (GSO_TCPV4, 16u16),
                (Proto::Tcp, true) => (GSO_TCPV6, 16),
                (Proto::Udp, _) => (GSO_UDP_L4, 6),
            };
            // struct virtio_net_hdr, host byte order (the TUN default).
            item.hdr[0] = F_NEEDS_CSUM;
            item.hdr[1] = gso_type;
            item.hdr[2..4].copy_from_slice(&((seg.iph + seg.l4h) as u16).to_ne_bytes());
            item.hdr[4..6].copy_from_slice(&(seg.payload as u16).to_ne_bytes());
            item.hdr[6..8].copy_from_slice(&(seg.iph as u16).to_ne_bytes());
            item.hdr[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
        }
        let mut failed = 0;
        let vnet = self.vnet;
        for item in &self.items[..self.n] {
            let bufs: &[B] = bufs;
            let part = |p: &Part| {
                bufs.get(p.buf)
                    .and_then(|b| b.as_ref().get(p.range.clone()))
                    .unwrap_or(&[])
            };
            let hdr: &[u8] = if vnet { &item.hdr } else { &[] };
            let mut parts = std::iter::once(hdr)
                .filter(|h| !h.is_empty())
                .chain(std::iter::once(part(&item.first)))
                .chain(item.more.iter().map(part));
            if !write(&mut parts) {
                failed += 1;
            }
        }
        self.n = 0;
        failed
    }
}

/// Parses an IP packet that may be coalesced: IPv4 without options or fragments, or
/// IPv6 without extension headers, carrying TCP (ACK, maybe PSH, with payload) or UDP.
fn parse(pkt: &[u8]) -> Option<Seg> {
    let (v6, iph, proto) = match pkt.first()? >> 4 {
        4 => {
            if pkt.len() < 20 || pkt[0] & 0x0f != 5 {
                return None;
            }
            let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
            // MF set or a fragment offset: not a whole datagram.
            if total != pkt.len() || pkt[6] & 0x3f != 0 || pkt[7] != 0 {
                return None;
            }
            (false, 20, pkt[9])
        }
        6 => {
            if pkt.len() < 40 {
                return None;
            }
            let payload = u16::from_be_bytes([pkt[4], pkt[5]]) as usize;
            if payload + 40 != pkt.len() {
                return None;
            }
            (true, 40, pkt[6])
        }
        _ => return None,
    };
    match proto {
        6 => {
            let flags = *pkt.get(iph + 13)?;
            let l4h = ((*pkt.get(iph + 12)? >> 4) as usize) * 4;
            if l4h < 20 || pkt.len() < iph + l4h {
                return None;
            }
            if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
                return None;
            }
            let payload = pkt.len() - iph - l4h;
            if payload == 0 {
                return None;
            }
            let seq = u32::from_be_bytes([pkt[iph + 4], pkt[iph + 5], pkt[iph + 6], pkt[iph + 7]]);
            Some(Seg {
                proto: Proto::Tcp,
                v6,
                iph,
                l4h,
                payload,
                seq,
                psh: flags & TCP_PSH != 0,
            })
        }
        17 => {
            if pkt.len() < iph + 8 {
                return None;
            }
            let ulen = u16::from_be_bytes([pkt[iph + 4], pkt[iph + 5]]) as usize;
            // A zero checksum (IPv4: none sent) cannot be vouched for.
            if ulen != pkt.len() - iph || pkt[iph + 6..iph + 8] == [0, 0] || ulen == 8 {
                return None;
            }
            Some(Seg {
                proto: Proto::Udp,
                v6,
                iph,
                l4h: 8,
                payload: ulen - 8,
                seq: 0,
                psh: false,
            })
        }
        _ => None,
    }
}

/// Same addresses, protocol and ports.
fn same_flow(a: &[u8], sa: &Seg, b: &[u8], sb: &Seg) -> bool {
    if sa.v6 != sb.v6 || sa.proto != sb.proto {
        return false;
    }
    let addrs = if sa.v6 { 8..40 } else { 12..20 };
    a[addrs.clone()] == b[addrs] && a[sa.iph..sa.iph + 4] == b[sb.iph..sb.iph + 4]
}

/// The IP header fields a merged packet takes from its head must be the same in all.
fn ip_fields_match(a: &[u8], b: &[u8], v6: bool) -> bool {
    if v6 {
        // Traffic class and hop limit.
        a[0] == b[0] && a[1] >> 4 == b[1] >> 4 && a[7] == b[7]
    } else {
        // TOS (with ECN), DF and reserved bits, TTL.
        a[1] == b[1] && a[6] >> 5 == b[6] >> 5 && a[8] == b[8]
    }
}

/// Sets the head's length fields for the merged packet, the IPv4 header checksum, and
/// the transport checksum field to the pseudo-header sum the kernel completes
/// (CHECKSUM_PARTIAL).
fn finish_head(head: &mut [u8], seg: &Seg, total: usize, psh: bool) {
    let l4_len = total - seg.iph;
    if seg.v6 {
        head[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        head[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        head[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&head[..20], 0));
        head[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let proto = match seg.proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    };
    let ps = fold(pseudo_sum(head, seg.v6, proto, l4_len));
    let at = seg.iph
        + match seg.proto {
            Proto::Tcp => {
                if psh {
                    head[seg.iph + 13] |= TCP_PSH;
                }
                16
            }
            Proto::Udp => {
                head[seg.iph + 4..seg.iph + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                6
            }
        };
    head[at..at + 2].copy_from_slice(&ps.to_be_bytes());
}

/// Whether the transport checksum of a parsed packet verifies (RFC 1071, RFC 793 3.1
/// pseudo header, RFC 8200 8.1).
fn l4_checksum_ok(pkt: &[u8], seg: &Seg) -> bool {
    let proto = match seg.proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    };
    let l4 = &pkt[seg.iph..];
    fold(sum(l4, pseudo_sum(pkt, seg.v6, proto, l4.len()))) == 0xffff
}

/// The pseudo-header sum (big-endian 16-bit words, unfolded).
fn pseudo_sum(pkt: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    sum(addrs, proto as u64 + l4_len as u64)
}

/// Adds `data`, as big-endian 16-bit words, to `acc` (one's complement, unfolded).
/// Sums little-endian 32-bit words (vectorises well) and swaps the bytes of the folded
/// result, which is the same sum (RFC 1071 2(B)); `data` starts on an even offset.
pub fn sum(data: &[u8], acc: u64) -> u64 {
    let mut le = 0u64;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        le += u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        le += u16::from_le_bytes([rest[i], rest[i + 1]]) as u64;
        i += 2;
    }
    if i < rest.len() {
        le += rest[i] as u64;
    }
    acc + fold(le).swap_bytes() as u64
}

/// Folds a one's complement sum to 16 bits.
pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward RFC 1071 over big-endian words, to check the fast one against.
    fn slow_sum(data: &[u8]) -> u16 {
        let mut s = 0u64;
        for c in data.chunks(2) {
            s += if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]]) as u64
            } else {
                (c[0] as u64) << 8
            };
        }
        fold(s)
    }

    fn tcp4(seq: u32, payload: &[u8], flags: u8, ttl: u8) -> Vec<u8> {
        let total = 20 + 32 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = ttl;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 100, 0, 5]);
        p[16..20].copy_from_slice(&[10, 200, 0, 1]);
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = 8 << 4; // 32-octet header: timestamps
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        t[32..].copy_from_slice(payload);
        let ps = pseudo_sum(&p, false, 6, total - 20);
        let c = !fold(sum(&p[20..], ps));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The writes a flush makes, each as the concatenation of its parts.
    fn flush_all(c: &mut Coalescer, bufs: &mut [Vec<u8>]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let failed = c.flush(bufs, |parts| {
            out.push(parts.flat_map(|p| p.iter().copied()).collect());
            true
        });
        assert_eq!(failed, 0);
        out
    }

    fn part_of(bufs: &[Vec<u8>], i: usize) -> Part {
        Part {
            buf: i,
            range: 0..bufs[i].len(),
        }
    }

    #[test]
    fn fast_checksum_matches_rfc1071_for_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(
                fold(sum(&data[..len], 0)),
                slow_sum(&data[..len]),
                "len {len}"
            );
        }
    }

    #[test]
    fn in_sequence_tcp_segments_become_one_tso_write_with_a_partial_checksum() {
        let pay: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut bufs = vec![
            tcp4(1000, &pay[..1000], TCP_ACK, 64),
            tcp4(2000, &pay[1000..2000], TCP_ACK, 64),
            tcp4(3000, &pay[2000..2500], TCP_ACK | TCP_PSH, 64),
        ];
        let mut c = Coalescer::new(true, true, false);
        for i in 0..3 {
            c.push(&bufs, part_of(&bufs, i));
        }
        let w = flush_all(&mut c, &mut bufs);
        assert_eq!(w.len(), 1);
        let (hdr, pkt) = w[0].split_at(VNET_HDR_LEN);
        assert_eq!(hdr[0], F_NEEDS_CSUM);
        assert_eq!(hdr[1], GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([hdr[2], hdr[3]]), 52, "hdr_len");
        assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), 1000, "gso_size");
        assert_eq!(u16::from_ne_bytes([hdr[6], hdr[7]]), 20, "csum_start");
        assert_eq!(u16::from_ne_bytes([hdr[8], hdr[9]]), 16, "csum_offset");
        assert_eq!(pkt.len(), 52 + 2500);
        assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]) as usize, pkt.len());
        assert_eq!(fold(sum(&pkt[..20], 0)), 0xffff, "IPv4 header checksum");
        assert_eq!(&pkt[52..], &pay[..2500]);
        assert_eq!(pkt[33], TCP_ACK | TCP_PSH, "PSH of the last segment kept");
        // The TCP checksum field holds the folded pseudo-header sum, not complemented.
        let ps = fold(pseudo_sum(pkt, false, 6, pkt.len() - 20));
        assert_eq!(u16::from_be_bytes([pkt[36], pkt[37]]), ps);
    }

    #[test]
    fn a_gap_a_corrupt_checksum_or_other_flags_end_the_run_when_verifying() {
        let pay = vec![0x5au8; 1000];
        let mut bad = tcp4(3000, &pay, TCP_ACK, 64);
        bad[60] ^= 1;
        let mut bufs = vec![
            tcp4(1000, &pay, TCP_ACK, 64),
            tcp4(2000, &pay, TCP_ACK, 64),
            bad,                                  // corrupt: alone
            tcp4(5000, &pay, TCP_ACK, 64),        // gap (4000 missing)
            tcp4(6000, &pay, TCP_ACK, 63),        // different TTL
            tcp4(7000, &pay, TCP_ACK | 0x01, 63), // FIN
        ];
        let mut c = Coalescer::new(true, true, true);
        for i in 0..bufs.len() {
            c.push(&bufs, part_of(&bufs, i));
        }
        let originals = bufs.clone();
        let w = flush_all(&mut c, &mut bufs);
        assert_eq!(w.len(), 5);
        assert_eq!(w[0].len(), VNET_HDR_LEN + 52 + 2000);
        for (k, orig) in [(1, 2), (2, 3), (3, 4), (4, 5)] {
            assert_eq!(w[k][..VNET_HDR_LEN], [0; VNET_HDR_LEN], "write {k} plain");
            assert_eq!(
                w[k][VNET_HDR_LEN..],
                originals[orig][..],
                "write {k} unchanged"
            );
        }
    }

    #[test]
    fn without_verify_the_esp_icv_vouches_and_a_bad_checksum_does_not_split_the_run() {
        let pay = vec![0x5au8; 1000];
        let mut odd = tcp4(3000, &pay, TCP_ACK, 64);
        odd[60] ^= 1;
        let mut bufs = vec![
            tcp4(1000, &pay, TCP_ACK, 64),
            tcp4(2000, &pay, TCP_ACK, 64),
            odd,
            tcp4(5000, &pay, TCP_ACK, 64), // gap: still ends the run
        ];
        let mut c = Coalescer::new(true, true, false);
        for i in 0..bufs.len() {
            c.push(&bufs, part_of(&bufs, i));
        }
        let w = flush_all(&mut c, &mut bufs);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].len(), VNET_HDR_LEN + 52 + 3000);
        assert_eq!(w[0][0], F_NEEDS_CSUM);
    }

    #[test]
    fn interleaved_flows_keep_their_own_order() {
        let pay = vec![1u8; 500];
        let mut other = tcp4(9000, &pay, TCP_ACK, 64);
        other[21] ^= 0x10; // another source port
        let mut other2 = tcp4(9500, &pay, TCP_ACK, 64);
        other2[21] ^= 0x10;
        // Fix the checksums of the changed port.
        for p in [&mut other, &mut other2] {
            p[36..38].copy_from_slice(&[0, 0]);
            let ps = pseudo_sum(p, false, 6, p.len() - 20);
            let c = !fold(sum(&p[20..], ps));
            p[36..38].copy_from_slice(&c.to_be_bytes());
        }
        let mut bufs = vec![
            tcp4(0, &pay, TCP_ACK, 64),
            other,
            tcp4(500, &pay, TCP_ACK, 64),
            other2,
        ];
        let mut c = Coalescer::new(true, false, false);
        for i in 0..bufs.len() {
            c.push(&bufs, part_of(&bufs, i));
        }
        let w = flush_all(&mut c, &mut bufs);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].len(), VNET_HDR_LEN + 52 + 1000);
        assert_eq!(w[1].len(), VNET_HDR_LEN + 52 + 1000);
        let port = |w: &[u8]| u16::from_be_bytes([w[VNET_HDR_LEN + 20], w[VNET_HDR_LEN + 21]]);
        assert_eq!(port(&w[0]), 40000);
        assert_eq!(port(&w[1]), 40000 ^ 0x10);
    }

    #[test]
    fn without_a_virtio_header_every_packet_is_written_alone() {
        let pay = vec![2u8; 100];
        let mut bufs = vec![tcp4(0, &pay, TCP_ACK, 64), tcp4(100, &pay, TCP_ACK, 64)];
        let originals = bufs.clone();
        let mut c = Coalescer::new(false, false, false);
        for i in 0..2 {
            c.push(&bufs, part_of(&bufs, i));
        }
        let w = flush_all(&mut c, &mut bufs);
        assert_eq!(w, originals);
    }

    #[test]
    fn garbage_is_written_alone_and_never_panics() {
        let mut bufs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x45],
            vec![0x45; 20],
            vec![0x60; 41],
            vec![0x4f; 60],
            (0..=255u8).collect(),
        ];
        let mut c = Coalescer::new(true, true, false);
        for i in 0..bufs.len() {
            c.push(&bufs, part_of(&bufs, i));
        }
        c.push(
            &bufs,
            Part {
                buf: 99,
                range: 0..10,
            },
        );
        let w = flush_all(&mut c, &mut bufs);
        assert_eq!(w.len(), bufs.len());
    }
}
