//! The outer receive demultiplexing of the data plane: what one received datagram is,
//! before any cryptography.
//!
//! * On the NAT-T port (UDP 4500, [`Carrier::Udp`]) a datagram is a NAT keepalive (one
//!   0xFF octet, RFC 3948 2.3), IKE (the four-octet non-ESP marker of zeros in front,
//!   RFC 3948 2.2) or ESP (a non-zero SPI in front, RFC 3948 2.1).
//! * From a raw IPv4 socket of protocol 50 ([`Carrier::RawV4`]) the IPv4 header comes
//!   first, `IHL * 4` octets long (RFC 791 3.1); a raw IPv6 socket ([`Carrier::RawV6`])
//!   delivers no IPv6 header (RFC 3542 3), the ESP header comes right away.
//! * A UDP GRO receive holds several datagrams of one segment size, the last possibly
//!   shorter ([`segments`]).
//!
//! ESP is recognised by its SPI: the caller's lookup (its SA table) is asked once, and a
//! packet whose SPI is unknown is refused here (RFC 4303 3.4.2). Nothing allocates or
//! copies; the caller decrypts `bytes[start..]` of an [`Outer::Esp`] in place.
use std::ops::Range;

use super::{EspDrop, ESP_HEADER_LEN};

/// How a datagram reached the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// The UDP payload of a datagram on the NAT-T port (RFC 3948).
    Udp,
    /// A raw IPv4 socket of IP protocol 50: the IPv4 header, then ESP.
    RawV4,
    /// A raw IPv6 socket of IP protocol 50: ESP alone (RFC 3542 3).
    RawV6,
}

/// What a received datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outer<'a, S> {
    /// A NAT keepalive (RFC 3948 2.3): counted and dropped.
    Keepalive,
    /// An IKE message behind the non-ESP marker (RFC 3948 2.2): the whole datagram,
    /// marker included.
    Ike(&'a [u8]),
    /// An ESP packet (RFC 4303 2) at `bytes[start..]`, at least its SPI and sequence
    /// number long, whose SPI the lookup found `sa` for.
    Esp { start: usize, spi: u32, sa: S },
}

/// Why a received datagram was refused before decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OuterDrop {
    /// No octets at all: neither a keepalive, nor IKE, nor ESP.
    #[error("empty datagram")]
    Empty,
    /// Fewer octets than an ESP header's SPI and sequence number (RFC 4303 2) where ESP
    /// must start.
    #[error("shorter than an ESP header")]
    Runt,
    /// An IPv4 header length (IHL) below five words (RFC 791 3.1).
    #[error("IPv4 header length below 20 octets")]
    BadIhl,
    /// Shorter than the IPv4 header length it states.
    #[error("shorter than its IPv4 header")]
    CutIpHeader,
    /// No SA for the SPI (RFC 4303 3.4.2).
    #[error("unknown SPI")]
    UnknownSpi,
}

impl OuterDrop {
    /// The ESP drop reason this is counted as (`esp_truncated`, `esp_unknown_spi`).
    pub fn esp_drop(self) -> EspDrop {
        match self {
            OuterDrop::Empty | OuterDrop::Runt | OuterDrop::BadIhl | OuterDrop::CutIpHeader => {
                EspDrop::Truncated
            }
            OuterDrop::UnknownSpi => EspDrop::UnknownSpi,
        }
    }
}

/// Classifies one datagram (one segment of a GRO receive) that arrived by `carrier`;
/// `lookup` is asked for the SA of an ESP packet's SPI, at most once, and only when the
/// packet is long enough for an ESP header.
#[inline]
pub fn classify_outer<'a, S>(
    carrier: Carrier,
    bytes: &'a [u8],
    lookup: impl FnOnce(u32) -> Option<S>,
) -> Result<Outer<'a, S>, OuterDrop> {
    let start = match carrier {
        Carrier::Udp => match bytes {
            [] => return Err(OuterDrop::Empty),
            [0xff] => return Ok(Outer::Keepalive),
            [0, 0, 0, 0, ..] => return Ok(Outer::Ike(bytes)),
            _ => 0,
        },
        Carrier::RawV6 => 0,
        Carrier::RawV4 => {
            let Some(&vihl) = bytes.first() else {
                return Err(OuterDrop::Empty);
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            if ihl < 20 {
                return Err(OuterDrop::BadIhl);
            }
            if bytes.len() < ihl {
                return Err(OuterDrop::CutIpHeader);
            }
            ihl
        }
    };
    let esp = &bytes[start..];
    let Some(&[a, b, c, d]) = esp.first_chunk::<4>() else {
        return Err(if bytes.is_empty() {
            OuterDrop::Empty
        } else {
            OuterDrop::Runt
        });
    };
    if esp.len() < ESP_HEADER_LEN {
        return Err(OuterDrop::Runt);
    }
    let spi = u32::from_be_bytes([a, b, c, d]);
    match lookup(spi) {
        Some(sa) => Ok(Outer::Esp { start, spi, sa }),
        None => Err(OuterDrop::UnknownSpi),
    }
}

/// The datagrams of one receive of `len` octets: with UDP GRO the kernel reports their
/// segment size `seg` (all `seg` octets long but the last, which may be shorter);
/// `seg == 0` (no GRO) makes the receive one datagram. The ranges cover `0..len` in
/// order, each octet once; an empty receive is one empty datagram.
#[inline]
pub fn segments(len: usize, seg: usize) -> Segments {
    Segments {
        next: 0,
        len,
        seg: if seg == 0 { len.max(1) } else { seg },
        done: false,
    }
}

/// Iterator of [`segments`].
#[derive(Debug, Clone)]
pub struct Segments {
    next: usize,
    len: usize,
    seg: usize,
    done: bool,
}

impl Iterator for Segments {
    type Item = Range<usize>;

    #[inline]
    fn next(&mut self) -> Option<Range<usize>> {
        if self.done {
            return None;
        }
        let start = self.next;
        let end = start.saturating_add(self.seg).min(self.len);
        self.next = end;
        self.done = end >= self.len;
        Some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SA table of the tests: SPI 0x1000_0001 is installed (as SA 7).
    fn table(spi: u32) -> Option<u8> {
        (spi == 0x1000_0001).then_some(7)
    }

    fn udp(bytes: &[u8]) -> Result<Outer<'_, u8>, OuterDrop> {
        classify_outer(Carrier::Udp, bytes, table)
    }

    /// An ESP header of SPI 0x1000_0001, sequence number 1, then 24 octets.
    fn esp() -> Vec<u8> {
        let mut p = vec![0x10, 0, 0, 1, 0, 0, 0, 1];
        p.extend([0x5a; 24]);
        p
    }

    #[test]
    fn a_single_ff_octet_on_the_natt_port_is_a_keepalive_and_nothing_else_is() {
        assert_eq!(udp(&[0xff]), Ok(Outer::Keepalive));
        // Two 0xFF octets, or 0xFF in front of more, are not keepalives (RFC 3948 2.3).
        assert_eq!(udp(&[0xff, 0xff]), Err(OuterDrop::Runt));
        assert_eq!(
            udp(&[0xff, 0, 0, 1, 0, 0, 0, 1]),
            Err(OuterDrop::UnknownSpi)
        );
        assert_eq!(udp(&[0xfe]), Err(OuterDrop::Runt));
        // Raw ESP has no keepalives.
        assert_eq!(
            classify_outer(Carrier::RawV6, &[0xff], table),
            Err(OuterDrop::Runt)
        );
    }

    #[test]
    fn the_non_esp_marker_makes_ike_with_the_marker_kept() {
        let ike = [0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd, 0x21, 0x20, 0x22, 0x08];
        assert_eq!(udp(&ike), Ok(Outer::Ike(&ike[..])));
        // The marker alone is still IKE (the engine refuses it as truncated).
        assert_eq!(udp(&[0, 0, 0, 0]), Ok(Outer::Ike(&[0u8, 0, 0, 0][..])));
        // Fewer zeros than a marker: a runt.
        assert_eq!(udp(&[0, 0, 0]), Err(OuterDrop::Runt));
        // Raw ESP with four zero octets in front is SPI 0, never installed.
        let mut looked = None;
        let r = classify_outer(Carrier::RawV6, &ike, |spi| {
            looked = Some(spi);
            table(spi)
        });
        assert_eq!((r, looked), (Err(OuterDrop::UnknownSpi), Some(0)));
    }

    #[test]
    fn esp_is_recognised_by_an_installed_spi() {
        let p = esp();
        assert_eq!(
            udp(&p),
            Ok(Outer::Esp {
                start: 0,
                spi: 0x1000_0001,
                sa: 7
            })
        );
        let mut other = p.clone();
        other[3] = 2;
        assert_eq!(udp(&other), Err(OuterDrop::UnknownSpi));
        // Exactly an SPI and a sequence number is enough to be looked up.
        assert_eq!(
            udp(&p[..8]).map(|o| matches!(o, Outer::Esp { .. })),
            Ok(true)
        );
        assert_eq!(
            classify_outer(Carrier::RawV6, &p, table),
            Ok(Outer::Esp {
                start: 0,
                spi: 0x1000_0001,
                sa: 7
            })
        );
    }

    #[test]
    fn short_and_empty_datagrams_are_refused_without_a_lookup() {
        for carrier in [Carrier::Udp, Carrier::RawV4, Carrier::RawV6] {
            let r = classify_outer(carrier, &[], |_| -> Option<u8> {
                panic!("looked up an empty datagram")
            });
            assert_eq!(r, Err(OuterDrop::Empty));
        }
        let p = esp();
        for n in 1..8 {
            for carrier in [Carrier::Udp, Carrier::RawV6] {
                let r = classify_outer(carrier, &p[..n], |_| -> Option<u8> {
                    panic!("looked up {n} octets")
                });
                assert_eq!(r, Err(OuterDrop::Runt), "{carrier:?} {n}");
            }
        }
        assert_eq!(OuterDrop::Empty.esp_drop(), EspDrop::Truncated);
        assert_eq!(OuterDrop::Runt.esp_drop(), EspDrop::Truncated);
        assert_eq!(OuterDrop::UnknownSpi.esp_drop(), EspDrop::UnknownSpi);
    }

    /// An IPv4 header of `words` 32-bit words (options zero) in front of `esp`.
    fn v4(words: u8, esp: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(words) * 4];
        p[0] = 0x40 | words;
        p[9] = 50;
        p.extend_from_slice(esp);
        p
    }

    #[test]
    fn a_raw_ipv4_datagram_is_esp_after_ihl_words() {
        let e = esp();
        for words in [5u8, 6, 15] {
            let p = v4(words, &e);
            let start = usize::from(words) * 4;
            assert_eq!(
                classify_outer(Carrier::RawV4, &p, table),
                Ok(Outer::Esp {
                    start,
                    spi: 0x1000_0001,
                    sa: 7
                })
            );
            assert_eq!(&p[start..], &e[..]);
            // The ESP header cut after the IPv4 header: a runt; nothing after it too.
            assert_eq!(
                classify_outer(Carrier::RawV4, &p[..start + 7], table),
                Err(OuterDrop::Runt)
            );
            assert_eq!(
                classify_outer(Carrier::RawV4, &p[..start], table),
                Err(OuterDrop::Runt)
            );
            // Shorter than the header it states.
            assert_eq!(
                classify_outer(Carrier::RawV4, &p[..start - 1], table),
                Err(OuterDrop::CutIpHeader)
            );
        }
        assert_eq!(OuterDrop::CutIpHeader.esp_drop(), EspDrop::Truncated);
    }

    #[test]
    fn an_ipv4_header_length_below_five_words_is_refused() {
        for words in 0..5u8 {
            let mut p = v4(5, &esp());
            p[0] = 0x40 | words;
            assert_eq!(
                classify_outer(Carrier::RawV4, &p, |_| -> Option<u8> {
                    panic!("IHL {words} looked up")
                }),
                Err(OuterDrop::BadIhl),
                "IHL {words}"
            );
        }
        assert_eq!(OuterDrop::BadIhl.esp_drop(), EspDrop::Truncated);
    }

    #[test]
    fn a_gro_receive_splits_into_segments_the_last_shorter() {
        let v: Vec<_> = segments(10, 4).collect();
        assert_eq!(v, vec![0..4, 4..8, 8..10]);
        assert_eq!(segments(12, 4).collect::<Vec<_>>(), vec![0..4, 4..8, 8..12]);
        // No GRO: one datagram, however long; a segment size past the length too.
        assert_eq!(segments(9000, 0).collect::<Vec<_>>(), vec![0..9000]);
        assert_eq!(segments(5, 1400).collect::<Vec<_>>(), vec![0..5]);
        // An empty datagram is one (empty) datagram, to be counted.
        assert_eq!(segments(0, 0).collect::<Vec<_>>(), vec![0..0]);
        // A 1-octet last segment (a keepalive behind ESP of the same flow).
        assert_eq!(segments(5, 2).collect::<Vec<_>>(), vec![0..2, 2..4, 4..5]);
    }
}
