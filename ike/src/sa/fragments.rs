//! Reassembly of IKE fragments (RFC 7383 2.6). Each fragment is authenticated before it
//! is stored; the number of fragments and the reassembled size are bounded.
use crate::error::Error;

/// Most fragments accepted for one message.
pub(crate) const MAX_FRAGMENTS: u16 = 64;

#[derive(Debug)]
pub(crate) struct Reassembly {
    pub msg_id: u32,
    /// Fragments of a response (to our request) rather than of a peer's request.
    pub response: bool,
    pub total: u16,
    pub first_inner: u8,
    parts: Vec<Option<Vec<u8>>>,
    have: u16,
    bytes: usize,
    /// Hash of the datagram carrying fragment 1 (for retransmission detection, 2.6.1).
    pub first_hash: Option<[u8; 32]>,
}

impl Reassembly {
    pub fn new(msg_id: u32, total: u16) -> Result<Self, Error> {
        if total == 0 || total > MAX_FRAGMENTS {
            return Err(Error::TooMany("fragments"));
        }
        Ok(Self {
            msg_id,
            response: false,
            total,
            first_inner: 0,
            parts: vec![None; usize::from(total)],
            have: 0,
            bytes: 0,
            first_hash: None,
        })
    }

    /// Stores fragment `number` (1-based). Returns the whole inner chain once complete.
    pub fn add(
        &mut self,
        number: u16,
        total: u16,
        first_inner: u8,
        plain: Vec<u8>,
        max: usize,
        hash: [u8; 32],
    ) -> Result<Option<Vec<u8>>, Error> {
        if total != self.total {
            return Err(Error::InvalidField {
                field: "total fragments",
                detail: format!("{total} after {}", self.total),
            });
        }
        if number == 0 || number > total {
            return Err(Error::InvalidField {
                field: "fragment number",
                detail: format!("{number} of {total}"),
            });
        }
        let slot = &mut self.parts[usize::from(number - 1)];
        if slot.is_some() {
            return Ok(None);
        }
        if self.bytes + plain.len() > max {
            return Err(Error::Oversized(self.bytes + plain.len()));
        }
        self.bytes += plain.len();
        *slot = Some(plain);
        self.have += 1;
        if number == 1 {
            self.first_inner = first_inner;
            self.first_hash = Some(hash);
        }
        if self.have < self.total {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.bytes);
        for p in self.parts.iter_mut() {
            out.extend_from_slice(p.as_deref().unwrap_or_default());
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_in_any_order_and_ignores_duplicates() {
        let mut r = Reassembly::new(3, 3).unwrap();
        assert_eq!(r.add(3, 3, 0, b"ghi".to_vec(), 100, [3; 32]).unwrap(), None);
        assert_eq!(r.add(3, 3, 0, b"XXX".to_vec(), 100, [3; 32]).unwrap(), None);
        assert_eq!(
            r.add(1, 3, 35, b"abc".to_vec(), 100, [1; 32]).unwrap(),
            None
        );
        assert_eq!(
            r.add(2, 3, 0, b"def".to_vec(), 100, [2; 32]).unwrap(),
            Some(b"abcdefghi".to_vec())
        );
        assert_eq!(r.first_inner, 35);
        assert_eq!(r.first_hash, Some([1; 32]));
    }

    #[test]
    fn bounds() {
        assert!(Reassembly::new(0, 0).is_err());
        assert!(Reassembly::new(0, MAX_FRAGMENTS + 1).is_err());
        let mut r = Reassembly::new(0, 2).unwrap();
        assert!(r.add(3, 2, 0, vec![], 10, [0; 32]).is_err());
        assert!(r.add(1, 5, 0, vec![], 10, [0; 32]).is_err());
        assert!(matches!(
            r.add(1, 2, 0, vec![0; 11], 10, [0; 32]),
            Err(Error::Oversized(_))
        ));
    }
}
