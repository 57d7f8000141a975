//! Fragmenting an IPv4 packet before encapsulation (RFC 4301 8.1, RFC 791 3.2 and 2.3).
//!
//! An IPv4 packet without Don't Fragment that is longer than an SA carries is cut the way
//! a router would: each fragment keeps the packet's Identification, addresses and
//! protocol, carries a multiple of 8 octets of its data (except the last), its Fragment
//! Offset counted from the packet's own offset (the packet may already be a fragment),
//! More Fragments on every fragment but the last (which keeps the packet's own flag), and
//! its own header checksum. Options are copied into the first fragment whole and into
//! later ones only when their copied flag is set (RFC 791 3.1). Each fragment then goes
//! in an ESP packet of its own, so no outer packet is ever fragmented.
//!
//! No allocation: [`Ipv4Fragments::next_into`] writes one fragment into the caller's
//! buffer at a time.
use super::EspDrop;

/// The smallest MTU every IPv4 link carries (RFC 791 3.2): 60 octets of header and 8 of
/// data.
pub const MIN_IPV4_MTU: usize = 68;

/// The fragments of one IPv4 packet, produced one by one.
#[derive(Debug, Clone)]
pub struct Ipv4Fragments<'a> {
    /// The packet's header, options included.
    header: &'a [u8],
    /// Its data (up to the Total Length).
    data: &'a [u8],
    /// The header of later fragments: the base header and the copied options, padded.
    later: [u8; 60],
    later_len: usize,
    /// Data octets per fragment: the first, and every later one.
    first_step: usize,
    later_step: usize,
    /// The packet's own Fragment Offset (octets) and More Fragments flag.
    base_offset: usize,
    more: bool,
    /// Data octets already produced.
    pos: usize,
}

impl<'a> Ipv4Fragments<'a> {
    /// The fragments of `packet`, none longer than `mtu` octets. Refused: anything but a
    /// well-formed IPv4 packet (`Truncated`), a packet with Don't Fragment, a packet
    /// already no longer than `mtu`, or an `mtu` below [`MIN_IPV4_MTU`] or too small for
    /// the packet's header and 8 octets (`Oversized`: it stays too big), and fragments
    /// that would reach past the 65535-octet datagram (`BadFragment`).
    pub fn new(packet: &'a [u8], mtu: usize) -> Result<Self, EspDrop> {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return Err(EspDrop::Truncated);
        }
        let ihl = (packet[0] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
        if ihl < 20 || total < ihl || total > packet.len() {
            return Err(EspDrop::Truncated);
        }
        let flags = u16::from_be_bytes([packet[6], packet[7]]);
        if flags & 0x4000 != 0 || total <= mtu || mtu < MIN_IPV4_MTU || mtu < ihl + 8 {
            return Err(EspDrop::Oversized);
        }
        let base_offset = (flags & 0x1fff) as usize * 8;
        if base_offset + total - ihl > u16::MAX as usize {
            return Err(EspDrop::BadFragment);
        }
        let (header, data) = packet[..total].split_at(ihl);
        let mut later = [0u8; 60];
        later[..20].copy_from_slice(&header[..20]);
        let mut n = 20;
        // Options (RFC 791 3.1): End of Option List ends them, No Operation is one octet,
        // every other option is type, length, value; copied when type's top bit is set.
        let mut opts = &header[20..];
        while let Some(&kind) = opts.first() {
            let len = match kind {
                0 => break,
                1 => 1,
                _ => match opts.get(1) {
                    Some(&l) if l >= 2 && (l as usize) <= opts.len() => l as usize,
                    _ => return Err(EspDrop::Truncated),
                },
            };
            if kind & 0x80 != 0 {
                later[n..n + len].copy_from_slice(&opts[..len]);
                n += len;
            }
            opts = &opts[len..];
        }
        // Padded with End of Option List octets (zero) to a 32-bit boundary.
        let later_len = n.div_ceil(4) * 4;
        Ok(Ipv4Fragments {
            header,
            data,
            later,
            later_len,
            first_step: (mtu - ihl) / 8 * 8,
            later_step: (mtu - later_len) / 8 * 8,
            base_offset,
            more: flags & 0x2000 != 0,
            pos: 0,
        })
    }

    /// The number of fragments still to come.
    pub fn remaining(&self) -> usize {
        let mut pos = self.pos;
        let mut n = 0;
        while pos < self.data.len() {
            pos += if pos == 0 {
                self.first_step
            } else {
                self.later_step
            };
            n += 1;
        }
        n
    }

    /// Writes the next fragment to the start of `out` and returns its length; `None` when
    /// every fragment was produced, or `out` is too short for the next one (then nothing
    /// more is produced).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.pos >= self.data.len() {
            return None;
        }
        let first = self.pos == 0;
        let (hdr, step): (&[u8], usize) = if first {
            (self.header, self.first_step)
        } else {
            (&self.later[..self.later_len], self.later_step)
        };
        let take = step.min(self.data.len() - self.pos);
        let last = self.pos + take == self.data.len();
        let len = hdr.len() + take;
        let Some(frag) = out.get_mut(..len) else {
            self.pos = self.data.len();
            return None;
        };
        frag[..hdr.len()].copy_from_slice(hdr);
        frag[hdr.len()..].copy_from_slice(&self.data[self.pos..self.pos + take]);
        frag[0] = 0x40 | (hdr.len() / 4) as u8;
        frag[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let offset = ((self.base_offset + self.pos) / 8) as u16;
        let more = if last { self.more } else { true };
        // Reserved flag and DF stay as they were (DF is clear, or we would not be here).
        let flags = u16::from_be_bytes([self.header[6], self.header[7]]) & 0x8000;
        let fo = flags | if more { 0x2000 } else { 0 } | offset;
        frag[6..8].copy_from_slice(&fo.to_be_bytes());
        frag[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&frag[..hdr.len()]);
        frag[10..12].copy_from_slice(&sum.to_be_bytes());
        self.pos += take;
        Some(len)
    }
}

/// The Internet checksum (RFC 1071) of an IPv4 header.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// IPv4 10.0.0.1 -> 10.0.0.2, UDP, Identification 0x1234, `opts` after the header.
    fn packet(opts: &[u8], data_len: usize, flags: u16) -> Vec<u8> {
        let ihl = 20 + opts.len();
        let mut p = vec![0u8; ihl + data_len];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[2..4].copy_from_slice(&((ihl + data_len) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6..8].copy_from_slice(&flags.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..ihl].copy_from_slice(opts);
        for (i, b) in p[ihl..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let sum = checksum(&p[..ihl]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    /// (header length, offset in octets, MF, data) of each fragment, checking every
    /// header's length field and checksum.
    fn split(p: &[u8], mtu: usize) -> Vec<(usize, usize, bool, Vec<u8>)> {
        let mut f = Ipv4Fragments::new(p, mtu).unwrap();
        let n = f.remaining();
        let mut out = vec![0u8; mtu];
        let mut v = Vec::new();
        while let Some(len) = f.next_into(&mut out) {
            let frag = &out[..len];
            assert!(len <= mtu);
            let ihl = (frag[0] & 0x0f) as usize * 4;
            assert_eq!(u16::from_be_bytes([frag[2], frag[3]]) as usize, len);
            assert_eq!(checksum(&frag[..ihl]), 0, "header checksum");
            assert_eq!(frag[4..6], p[4..6], "Identification kept");
            assert_eq!(frag[9], p[9], "protocol kept");
            assert_eq!(frag[12..20], p[12..20], "addresses kept");
            let fo = u16::from_be_bytes([frag[6], frag[7]]);
            v.push((
                ihl,
                (fo & 0x1fff) as usize * 8,
                fo & 0x2000 != 0,
                frag[ihl..].to_vec(),
            ));
        }
        assert_eq!(v.len(), n);
        v
    }

    #[test]
    fn a_4000_octet_packet_becomes_fragments_that_reassemble_to_it() {
        let p = packet(&[], 3980, 0);
        let frags = split(&p, 1400);
        // 1376 data octets (1380 rounded down to 8) per fragment: 1376, 1376, 1228.
        let sizes: Vec<usize> = frags.iter().map(|f| f.3.len()).collect();
        assert_eq!(sizes, [1376, 1376, 1228]);
        let mut whole = Vec::new();
        for (i, (ihl, off, more, data)) in frags.iter().enumerate() {
            assert_eq!(*ihl, 20);
            assert_eq!(*off, whole.len());
            assert_eq!(*more, i < 2);
            assert!(!more || data.len() % 8 == 0);
            whole.extend_from_slice(data);
        }
        assert_eq!(whole, p[20..]);
    }

    #[test]
    fn a_fragment_is_cut_again_from_its_own_offset_and_keeps_its_more_flag() {
        // The middle of a datagram: offset 2960, More Fragments set.
        let p = packet(&[], 3000, 0x2000 | 370);
        let frags = split(&p, 1500);
        assert_eq!(frags.len(), 3);
        assert_eq!(frags[0].1, 2960);
        assert_eq!(frags[1].1, 2960 + 1480);
        assert!(frags.iter().all(|f| f.2), "all keep More Fragments");
        // The last of a datagram keeps MF clear on its own last piece.
        let p = packet(&[], 3000, 370);
        let frags = split(&p, 1500);
        assert_eq!(
            frags.iter().map(|f| f.2).collect::<Vec<_>>(),
            [true, true, false]
        );
    }

    #[test]
    fn only_copied_options_go_into_later_fragments() {
        // Record Route (7, not copied, 11 octets), NOP, Security-like (0x82, copied, 4
        // octets) and padding: 16 octets of options.
        let mut opts = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0];
        opts.extend_from_slice(&[1, 0x82, 4, 0xaa, 0xbb]);
        assert_eq!(opts.len(), 16);
        let p = packet(&opts, 2000, 0);
        let frags = split(&p, 600);
        assert_eq!(frags[0].0, 36, "the first fragment keeps every option");
        for f in &frags[1..] {
            assert_eq!(f.0, 24, "the copied option, padded to 4 octets");
        }
        let mut out = vec![0u8; 600];
        let mut it = Ipv4Fragments::new(&p, 600).unwrap();
        it.next_into(&mut out).unwrap();
        it.next_into(&mut out).unwrap();
        assert_eq!(out[20..24], [0x82, 4, 0xaa, 0xbb]);
        let data: Vec<u8> = frags.iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(data, p[36..]);
    }

    #[test]
    fn what_must_not_be_fragmented_is_refused() {
        let df = packet(&[], 3000, 0x4000);
        assert_eq!(
            Ipv4Fragments::new(&df, 1400).unwrap_err(),
            EspDrop::Oversized
        );
        let small = packet(&[], 1000, 0);
        assert_eq!(
            Ipv4Fragments::new(&small, 1400).unwrap_err(),
            EspDrop::Oversized
        );
        let p = packet(&[], 3000, 0);
        assert_eq!(Ipv4Fragments::new(&p, 67).unwrap_err(), EspDrop::Oversized);
        // The smallest MTU: 48 data octets per fragment behind a 20-octet header.
        assert_eq!(split(&p, 68).len(), 63);
        // Past 65535 octets of datagram once at its offset.
        let far = packet(&[], 3000, 8000);
        assert_eq!(
            Ipv4Fragments::new(&far, 1400).unwrap_err(),
            EspDrop::BadFragment
        );
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert_eq!(
            Ipv4Fragments::new(&v6, 1400).unwrap_err(),
            EspDrop::Truncated
        );
        // A Total Length beyond the packet, a broken option, and every truncation.
        let mut lying = p.clone();
        lying[2..4].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(
            Ipv4Fragments::new(&lying, 1400).unwrap_err(),
            EspDrop::Truncated
        );
        let bad_opt = packet(&[7, 0, 0, 0], 3000, 0);
        assert_eq!(
            Ipv4Fragments::new(&bad_opt, 1400).unwrap_err(),
            EspDrop::Truncated
        );
        for n in 0..p.len() {
            let _ = Ipv4Fragments::new(&p[..n], 1400);
        }
        // An output buffer too short stops the run without panicking.
        let mut f = Ipv4Fragments::new(&p, 1400).unwrap();
        assert_eq!(f.next_into(&mut [0u8; 100]), None);
        assert_eq!(f.next_into(&mut [0u8; 1400]), None);
    }
}
