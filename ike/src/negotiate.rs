//! Proposal negotiation (RFC 7296 2.7, 3.3, 3.3.6) and traffic selector narrowing (2.9).
//!
//! Pure functions over the wire data model ([`Proposal`], [`Transform`],
//! [`TrafficSelector`]) and the configuration ([`IkeProposal`], [`EspProposal`]):
//!
//! * initiator: [`ike_offer`] / [`esp_offer`] build the SA payload, [`check_ike_reply`] /
//!   [`check_esp_reply`] validate the responder's single returned proposal;
//! * responder: [`select_ike`] / [`select_esp`] pick the first acceptable offered
//!   proposal and return the proposal to echo, [`check_ke_group`] and
//!   [`acceptable_group`] drive INVALID_KE_PAYLOAD (2.7);
//! * [`narrow`] narrows the peer's TSi/TSr to our local selectors and its virtual IPs.

use std::net::IpAddr;

use crate::config::{DhGroup, EncrAlg, EspProposal, IkeProposal, IntegAlg, PrfAlg};
use crate::error::Error;
use crate::event::{Spi, TrafficSelector};
use crate::message::{Proposal, ProtocolId, Transform};

// ---------------------------------------------------------------------------------------
// IANA numbers (RFC 7296 3.3.2, IANA "IKEv2 Transform Attribute Types" registries)
// ---------------------------------------------------------------------------------------

/// ENCR_AES_CBC (RFC 3602).
pub const ENCR_AES_CBC: u16 = 12;
/// ENCR_AES_GCM_16 (RFC 4106, RFC 5282).
pub const ENCR_AES_GCM_16: u16 = 20;
/// ENCR_CHACHA20_POLY1305 (RFC 7634).
pub const ENCR_CHACHA20_POLY1305: u16 = 28;
/// PRF_HMAC_SHA2_256 (RFC 4868).
pub const PRF_HMAC_SHA2_256: u16 = 5;
/// PRF_HMAC_SHA2_384 (RFC 4868).
pub const PRF_HMAC_SHA2_384: u16 = 6;
/// PRF_HMAC_SHA2_512 (RFC 4868).
pub const PRF_HMAC_SHA2_512: u16 = 7;
/// AUTH_NONE: no integrity transform, for AEAD ciphers (RFC 7296 3.3.2).
pub const AUTH_NONE: u16 = 0;
/// AUTH_HMAC_SHA2_256_128 (RFC 4868).
pub const AUTH_HMAC_SHA2_256_128: u16 = 12;
/// AUTH_HMAC_SHA2_384_192 (RFC 4868).
pub const AUTH_HMAC_SHA2_384_192: u16 = 13;
/// AUTH_HMAC_SHA2_512_256 (RFC 4868).
pub const AUTH_HMAC_SHA2_512_256: u16 = 14;
/// Key exchange method NONE (RFC 7296 3.3.2).
pub const DH_NONE: u16 = 0;
/// ESN transform IDs (RFC 7296 3.3.2).
pub const ESN_NO: u16 = 0;
/// ESN transform IDs (RFC 7296 3.3.2).
pub const ESN_YES: u16 = 1;

/// The wire transform for an encryption algorithm. AES carries the Key Length attribute
/// (RFC 7296 3.3.5); ChaCha20-Poly1305 has a fixed key and must not (RFC 7634 2).
pub fn encr_transform(e: EncrAlg) -> Transform {
    let (id, key_length) = match e {
        EncrAlg::AesCbc(bits) => (ENCR_AES_CBC, Some(bits)),
        EncrAlg::AesGcm16(bits) => (ENCR_AES_GCM_16, Some(bits)),
        EncrAlg::ChaCha20Poly1305 => (ENCR_CHACHA20_POLY1305, None),
    };
    Transform {
        kind: Transform::ENCR,
        id,
        key_length,
    }
}

/// The encryption algorithm a wire transform names, if we implement it with that key size.
pub fn encr_from_transform(t: &Transform) -> Option<EncrAlg> {
    if t.kind != Transform::ENCR {
        return None;
    }
    match (t.id, t.key_length) {
        (ENCR_AES_CBC, Some(b @ (128 | 256))) => Some(EncrAlg::AesCbc(b)),
        (ENCR_AES_GCM_16, Some(b @ (128 | 256))) => Some(EncrAlg::AesGcm16(b)),
        (ENCR_CHACHA20_POLY1305, None) => Some(EncrAlg::ChaCha20Poly1305),
        _ => None,
    }
}

/// Whether an encryption algorithm is AEAD (combined mode, RFC 5282): then no separate
/// integrity transform is negotiated.
pub fn is_aead(e: EncrAlg) -> bool {
    matches!(e, EncrAlg::AesGcm16(_) | EncrAlg::ChaCha20Poly1305)
}

/// The wire transform for a PRF (RFC 7296 3.3.2, transform type 2).
pub fn prf_transform(p: PrfAlg) -> Transform {
    let id = match p {
        PrfAlg::HmacSha256 => PRF_HMAC_SHA2_256,
        PrfAlg::HmacSha384 => PRF_HMAC_SHA2_384,
        PrfAlg::HmacSha512 => PRF_HMAC_SHA2_512,
    };
    Transform {
        kind: Transform::PRF,
        id,
        key_length: None,
    }
}

/// The PRF a wire transform names, if we implement it.
pub fn prf_from_transform(t: &Transform) -> Option<PrfAlg> {
    if t.kind != Transform::PRF || t.key_length.is_some() {
        return None;
    }
    match t.id {
        PRF_HMAC_SHA2_256 => Some(PrfAlg::HmacSha256),
        PRF_HMAC_SHA2_384 => Some(PrfAlg::HmacSha384),
        PRF_HMAC_SHA2_512 => Some(PrfAlg::HmacSha512),
        _ => None,
    }
}

/// The wire transform for an integrity algorithm (RFC 7296 3.3.2, transform type 3).
pub fn integ_transform(i: IntegAlg) -> Transform {
    let id = match i {
        IntegAlg::HmacSha256_128 => AUTH_HMAC_SHA2_256_128,
        IntegAlg::HmacSha384_192 => AUTH_HMAC_SHA2_384_192,
        IntegAlg::HmacSha512_256 => AUTH_HMAC_SHA2_512_256,
    };
    Transform {
        kind: Transform::INTEG,
        id,
        key_length: None,
    }
}

/// The integrity algorithm a wire transform names, if we implement it (not NONE).
pub fn integ_from_transform(t: &Transform) -> Option<IntegAlg> {
    if t.kind != Transform::INTEG || t.key_length.is_some() {
        return None;
    }
    match t.id {
        AUTH_HMAC_SHA2_256_128 => Some(IntegAlg::HmacSha256_128),
        AUTH_HMAC_SHA2_384_192 => Some(IntegAlg::HmacSha384_192),
        AUTH_HMAC_SHA2_512_256 => Some(IntegAlg::HmacSha512_256),
        _ => None,
    }
}

/// IANA group number of a key exchange method (RFC 7296 3.3.2 type 4; RFC 3526 14,
/// RFC 5903 19/20, RFC 8031 31).
pub fn dh_group_number(g: DhGroup) -> u16 {
    match g {
        DhGroup::Modp2048 => 14,
        DhGroup::Ecp256 => 19,
        DhGroup::Ecp384 => 20,
        DhGroup::Curve25519 => 31,
    }
}

/// The key exchange method with IANA number `n`, if we implement it.
pub fn dh_group_from_number(n: u16) -> Option<DhGroup> {
    match n {
        14 => Some(DhGroup::Modp2048),
        19 => Some(DhGroup::Ecp256),
        20 => Some(DhGroup::Ecp384),
        31 => Some(DhGroup::Curve25519),
        _ => None,
    }
}

/// The wire transform for a key exchange method (transform type 4).
pub fn dh_transform(g: DhGroup) -> Transform {
    Transform {
        kind: Transform::DH,
        id: dh_group_number(g),
        key_length: None,
    }
}

/// The key exchange method a wire transform names, if we implement it (not NONE).
pub fn dh_from_transform(t: &Transform) -> Option<DhGroup> {
    if t.kind != Transform::DH || t.key_length.is_some() {
        return None;
    }
    dh_group_from_number(t.id)
}

fn esn_transform(on: bool) -> Transform {
    Transform {
        kind: Transform::ESN,
        id: if on { ESN_YES } else { ESN_NO },
        key_length: None,
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

/// A negotiated IKE SA suite (RFC 7296 3.3.2): one transform of each type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NegotiatedIke {
    pub encr: EncrAlg,
    pub prf: PrfAlg,
    /// `None` for AEAD ciphers.
    pub integ: Option<IntegAlg>,
    pub dh: DhGroup,
}

/// A negotiated ESP (CHILD SA) suite (RFC 7296 3.3.2, RFC 4303).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NegotiatedEsp {
    pub encr: EncrAlg,
    /// `None` for AEAD ciphers.
    pub integ: Option<IntegAlg>,
    /// Key exchange for PFS in CREATE_CHILD_SA; `None` without PFS (and always in IKE_AUTH).
    pub dh: Option<DhGroup>,
    /// Extended sequence numbers (RFC 4303 2.2.1).
    pub esn: bool,
}

// ---------------------------------------------------------------------------------------
// Initiator: building offers
// ---------------------------------------------------------------------------------------

fn number(i: usize) -> u8 {
    // Proposal numbers are one octet; more than 255 configured proposals is not a
    // configuration anyone can write, and the SA payload would refuse to encode it.
    u8::try_from(i + 1).unwrap_or(u8::MAX)
}

/// Wire proposals for an IKE SA (RFC 7296 3.3): proposal `i` of the configuration becomes
/// proposal number `i + 1`, transforms in configured preference order. `spi` is empty in
/// IKE_SA_INIT and our new 8-octet SPI for an IKE SA rekey (2.18).
pub fn ike_offer(props: &[IkeProposal], spi: &[u8]) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut t: Vec<Transform> = p.encr.iter().map(|e| encr_transform(*e)).collect();
            t.extend(p.prf.iter().map(|x| prf_transform(*x)));
            if !p.encr.iter().all(|e| is_aead(*e)) {
                t.extend(p.integ.iter().map(|x| integ_transform(*x)));
            }
            t.extend(p.dh.iter().map(|x| dh_transform(*x)));
            Proposal {
                number: number(i),
                protocol: ProtocolId::Ike,
                spi: spi.to_vec(),
                transforms: t,
            }
        })
        .collect()
}

/// Like [`ike_offer`], with `group` moved to the front of every proposal that has it, so
/// that the KE payload we send matches the responder's first choice (2.7, 2.18).
pub fn ike_offer_preferring(props: &[IkeProposal], spi: &[u8], group: DhGroup) -> Vec<Proposal> {
    let mut props = props.to_vec();
    for p in &mut props {
        if let Some(pos) = p.dh.iter().position(|g| *g == group) {
            let g = p.dh.remove(pos);
            p.dh.insert(0, g);
        }
    }
    ike_offer(&props, spi)
}

/// Wire ESP proposals carrying our inbound SPI (RFC 7296 3.3). With `pfs` (CREATE_CHILD_SA)
/// the configured key exchange methods are included; IKE_AUTH never carries them (1.2).
/// The ESN transform is always present, as RFC 7296 3.3.2 requires for ESP.
pub fn esp_offer(props: &[EspProposal], spi: Spi, pfs: bool) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut t: Vec<Transform> = p.encr.iter().map(|e| encr_transform(*e)).collect();
            if !p.encr.iter().all(|e| is_aead(*e)) {
                t.extend(p.integ.iter().map(|x| integ_transform(*x)));
            }
            if pfs {
                t.extend(p.dh.iter().map(|x| dh_transform(*x)));
            }
            t.push(esn_transform(p.esn));
            Proposal {
                number: number(i),
                protocol: ProtocolId::Esp,
                spi: spi.0.to_be_bytes().to_vec(),
                transforms: t,
            }
        })
        .collect()
}

/// Like [`esp_offer`] with PFS, `group` moved to the front so our KE matches.
pub fn esp_offer_preferring(props: &[EspProposal], spi: Spi, group: DhGroup) -> Vec<Proposal> {
    let mut props = props.to_vec();
    for p in &mut props {
        if let Some(pos) = p.dh.iter().position(|g| *g == group) {
            let g = p.dh.remove(pos);
            p.dh.insert(0, g);
        }
    }
    esp_offer(&props, spi, true)
}

// ---------------------------------------------------------------------------------------
// Responder: selection
// ---------------------------------------------------------------------------------------

fn of_kind(p: &Proposal, kind: u8) -> impl Iterator<Item = &Transform> {
    p.transforms.iter().filter(move |t| t.kind == kind)
}

/// The first offered transform of `kind` that maps to an algorithm in `ours`, with the
/// `prefer` algorithm chosen first when it is offered and acceptable.
fn pick<T: Copy + PartialEq>(
    p: &Proposal,
    kind: u8,
    ours: &[T],
    from: impl Fn(&Transform) -> Option<T>,
    prefer: Option<T>,
) -> Option<(T, Transform)> {
    let acceptable = |t: &Transform| from(t).filter(|a| ours.contains(a)).map(|a| (a, *t));
    if let Some(want) = prefer {
        if let Some(x) = of_kind(p, kind)
            .filter_map(acceptable)
            .find(|(a, _)| *a == want)
        {
            return Some(x);
        }
    }
    of_kind(p, kind).find_map(acceptable)
}

/// The encryption (and integrity) picked from one offered proposal: the algorithms, the
/// transforms to echo, and an INTEG NONE transform to echo for AEAD when one was offered.
struct EncrInteg {
    encr: EncrAlg,
    encr_t: Transform,
    integ: Option<(IntegAlg, Transform)>,
    integ_none: Option<Transform>,
}

/// Encryption and integrity for one offered proposal against one of ours (RFC 7296 3.3:
/// an AEAD cipher takes no integrity transform, or NONE; RFC 5282 8).
fn pick_encr_integ(
    p: &Proposal,
    encr_ours: &[EncrAlg],
    integ_ours: &[IntegAlg],
) -> Option<EncrInteg> {
    let offered_integ: Vec<&Transform> = of_kind(p, Transform::INTEG).collect();
    let real_integ = offered_integ.iter().any(|t| t.id != AUTH_NONE);
    let none_offered = offered_integ.iter().any(|t| t.id == AUTH_NONE);
    for t in of_kind(p, Transform::ENCR) {
        let Some(e) = encr_from_transform(t).filter(|e| encr_ours.contains(e)) else {
            continue;
        };
        if is_aead(e) {
            // A proposal combining AEAD with real integrity is only usable for a non-AEAD
            // cipher it also offers.
            if real_integ {
                continue;
            }
            let echo_none = none_offered.then_some(Transform {
                kind: Transform::INTEG,
                id: AUTH_NONE,
                key_length: None,
            });
            return Some(EncrInteg {
                encr: e,
                encr_t: *t,
                integ: None,
                integ_none: echo_none,
            });
        }
        if let Some(i) = pick(p, Transform::INTEG, integ_ours, integ_from_transform, None) {
            return Some(EncrInteg {
                encr: e,
                encr_t: *t,
                integ: Some(i),
                integ_none: None,
            });
        }
    }
    None
}

/// Our proposals with those accepting the KE payload's group first: within one offered
/// proposal, any of ours that can take the group the peer already sent wins, so the KE
/// is used whenever possible and INVALID_KE_PAYLOAD is only sent when it must be (2.7).
fn ke_first<T>(ours: &[T], group: Option<DhGroup>, dh: impl Fn(&T) -> &Vec<DhGroup>) -> Vec<&T> {
    let has = |o: &&T| group.is_some_and(|g| dh(o).contains(&g));
    ours.iter()
        .filter(has)
        .chain(ours.iter().filter(|o| !has(o)))
        .collect()
}

/// Responder side of IKE_SA_INIT (and IKE SA rekey, 2.18): the first offered IKE proposal
/// acceptable under any of our proposals (RFC 7296 2.7), with one transform of each type.
///
/// `ke_group` is the group of the KE payload that came with the offer: when that group is
/// acceptable in the chosen proposal it is chosen, so that no INVALID_KE_PAYLOAD round trip
/// is needed. Returns the suite and the proposal to echo (number and SPI kept; for a
/// rekey the caller replaces the SPI with its own).
pub fn select_ike(
    offered: &[Proposal],
    ours: &[IkeProposal],
    ke_group: Option<u16>,
) -> Result<(NegotiatedIke, Proposal), Error> {
    let prefer_dh = ke_group.and_then(dh_group_from_number);
    let ours = ke_first(ours, prefer_dh, |o| &o.dh);
    for p in offered {
        if p.protocol != ProtocolId::Ike || !(p.spi.is_empty() || p.spi.len() == 8) {
            continue;
        }
        for o in ours.iter().copied() {
            let Some(EncrInteg {
                encr,
                encr_t: te,
                integ,
                integ_none,
            }) = pick_encr_integ(p, &o.encr, &o.integ)
            else {
                continue;
            };
            let Some((prf, tp)) = pick(p, Transform::PRF, &o.prf, prf_from_transform, None) else {
                continue;
            };
            let Some((dh, td)) = pick(p, Transform::DH, &o.dh, dh_from_transform, prefer_dh) else {
                continue;
            };
            let mut transforms = vec![te, tp];
            transforms.extend(integ.map(|(_, t)| t).or(integ_none));
            transforms.push(td);
            let chosen = Proposal {
                number: p.number,
                protocol: ProtocolId::Ike,
                spi: p.spi.clone(),
                transforms,
            };
            return Ok((
                NegotiatedIke {
                    encr,
                    prf,
                    integ: integ.map(|(a, _)| a),
                    dh,
                },
                chosen,
            ));
        }
    }
    Err(Error::NoProposalChosen)
}

/// Checks the KE payload's group against the negotiated one (RFC 7296 2.7): a mismatch
/// is [`Error::InvalidKePayload`], answered with INVALID_KE_PAYLOAD carrying `want`.
pub fn check_ke_group(negotiated: DhGroup, ke_group: u16) -> Result<(), Error> {
    let want = dh_group_number(negotiated);
    if want == ke_group {
        Ok(())
    } else {
        Err(Error::InvalidKePayload {
            got: ke_group,
            want,
        })
    }
}

/// Which group we would accept from these offered IKE proposals (RFC 7296 2.7): the group
/// of the proposal [`select_ike`] would choose. `None` means NO_PROPOSAL_CHOSEN.
pub fn acceptable_group(offered: &[Proposal], ours: &[IkeProposal]) -> Option<DhGroup> {
    select_ike(offered, ours, None).ok().map(|(s, _)| s.dh)
}

/// Responder side of IKE_AUTH and CREATE_CHILD_SA for a CHILD SA (RFC 7296 2.7, 3.3).
///
/// Only ESP proposals with a 4-octet SPI are considered. `pfs_allowed` is false in
/// IKE_AUTH, where key exchange transforms are ignored (1.2); in CREATE_CHILD_SA a
/// proposal of ours with groups requires one of them (PFS), and one without groups
/// accepts an offer without key exchange (or with NONE). `ke_group` prefers the group of
/// the KE payload, as for [`select_ike`]. ESN: ours with `esn` accepts either, preferring
/// ESN; ours without requires "no ESN" to be offered (an offer without any ESN transform
/// counts as "no ESN").
///
/// Returns the suite, the proposal to echo (the caller replaces the SPI with its own
/// inbound SPI) and the peer's SPI.
pub fn select_esp(
    offered: &[Proposal],
    ours: &[EspProposal],
    pfs_allowed: bool,
    ke_group: Option<u16>,
) -> Result<(NegotiatedEsp, Proposal, Spi), Error> {
    let prefer_dh = ke_group.and_then(dh_group_from_number);
    let ours = ke_first(ours, prefer_dh, |o| &o.dh);
    for p in offered {
        if p.protocol != ProtocolId::Esp {
            continue;
        }
        let Ok(spi_bytes) = <[u8; 4]>::try_from(p.spi.as_slice()) else {
            continue;
        };
        let peer_spi = Spi(u32::from_be_bytes(spi_bytes));
        for o in ours.iter().copied() {
            let Some(EncrInteg {
                encr,
                encr_t: te,
                integ,
                integ_none,
            }) = pick_encr_integ(p, &o.encr, &o.integ)
            else {
                continue;
            };
            // Key exchange (PFS).
            let offered_dh: Vec<&Transform> = of_kind(p, Transform::DH).collect();
            let mut dh_echo = None;
            let dh = if !pfs_allowed || offered_dh.is_empty() {
                if pfs_allowed && !o.dh.is_empty() {
                    continue; // we require PFS, none offered
                }
                None
            } else if o.dh.is_empty() {
                match offered_dh.iter().find(|t| t.id == DH_NONE) {
                    Some(t) => {
                        dh_echo = Some(**t);
                        None
                    }
                    None => continue,
                }
            } else {
                match pick(p, Transform::DH, &o.dh, dh_from_transform, prefer_dh) {
                    Some((g, t)) => {
                        dh_echo = Some(t);
                        Some(g)
                    }
                    None => continue,
                }
            };
            // Extended sequence numbers.
            let esns: Vec<u16> = of_kind(p, Transform::ESN).map(|t| t.id).collect();
            let esn = if esns.is_empty() {
                false
            } else if o.esn && esns.contains(&ESN_YES) {
                true
            } else if esns.contains(&ESN_NO) {
                false
            } else {
                continue;
            };
            let mut transforms = vec![te];
            transforms.extend(integ.map(|(_, t)| t).or(integ_none));
            transforms.extend(dh_echo);
            if !esns.is_empty() {
                transforms.push(esn_transform(esn));
            }
            let chosen = Proposal {
                number: p.number,
                protocol: ProtocolId::Esp,
                spi: p.spi.clone(),
                transforms,
            };
            let suite = NegotiatedEsp {
                encr,
                integ: integ.map(|(a, _)| a),
                dh,
                esn,
            };
            return Ok((suite, chosen, peer_spi));
        }
    }
    Err(Error::NoProposalChosen)
}

// ---------------------------------------------------------------------------------------
// Initiator: validating the reply
// ---------------------------------------------------------------------------------------

/// Exactly one transform of `kind`, or none. More than one is a malformed reply (2.7).
fn single(p: &Proposal, kind: u8) -> Result<Option<&Transform>, Error> {
    let mut it = of_kind(p, kind);
    let first = it.next();
    if it.next().is_some() {
        return Err(Error::InvalidField {
            field: "SA reply",
            detail: format!("more than one transform of type {kind}"),
        });
    }
    Ok(first)
}

/// The proposal of ours that the reply's proposal number names (numbers count from 1 in
/// offer order, RFC 7296 3.3.1); a number we never used is a choice we did not offer.
fn offered<'a, T>(p: &Proposal, ours: &'a [T]) -> Result<&'a T, Error> {
    usize::from(p.number)
        .checked_sub(1)
        .and_then(|i| ours.get(i))
        .ok_or(Error::NoProposalChosen)
}

/// The reply's single transform of `kind` (required), parsed with `parse` and among the
/// algorithms we offered in that proposal.
fn chosen<T: PartialEq>(
    p: &Proposal,
    kind: u8,
    parse: fn(&Transform) -> Option<T>,
    offered: &[T],
) -> Result<T, Error> {
    single(p, kind)?
        .and_then(parse)
        .filter(|x| offered.contains(x))
        .ok_or(Error::NoProposalChosen)
}

fn only_known_kinds(p: &Proposal, kinds: &[u8]) -> Result<(), Error> {
    match p.transforms.iter().find(|t| !kinds.contains(&t.kind)) {
        Some(t) => Err(Error::InvalidField {
            field: "SA reply",
            detail: format!("unexpected transform type {}", t.kind),
        }),
        None => Ok(()),
    }
}

/// The responder's SA payload must hold exactly one proposal (RFC 7296 2.7, 3.3).
fn the_one(reply: &[Proposal]) -> Result<&Proposal, Error> {
    match reply {
        [p] => Ok(p),
        _ => Err(Error::InvalidField {
            field: "SA reply",
            detail: format!("{} proposals, need exactly one", reply.len()),
        }),
    }
}

/// Initiator: validates the responder's IKE SA proposal against what we offered with
/// [`ike_offer`] (RFC 7296 2.7): one proposal, whose number names one of ours, one
/// transform of each type, each acceptable under that proposal of ours. Anything else is
/// [`Error::NoProposalChosen`] (a choice we did not offer) or [`Error::InvalidField`].
pub fn check_ike_reply(reply: &[Proposal], ours: &[IkeProposal]) -> Result<NegotiatedIke, Error> {
    let p = the_one(reply)?;
    if p.protocol != ProtocolId::Ike {
        return Err(Error::NoProposalChosen);
    }
    let o = offered(p, ours)?;
    only_known_kinds(
        p,
        &[
            Transform::ENCR,
            Transform::PRF,
            Transform::INTEG,
            Transform::DH,
        ],
    )?;
    let encr = chosen(p, Transform::ENCR, encr_from_transform, &o.encr)?;
    let prf = chosen(p, Transform::PRF, prf_from_transform, &o.prf)?;
    let integ = check_integ(single(p, Transform::INTEG)?, encr, &o.integ)?;
    let dh = chosen(p, Transform::DH, dh_from_transform, &o.dh)?;
    Ok(NegotiatedIke {
        encr,
        prf,
        integ,
        dh,
    })
}

fn check_integ(
    t: Option<&Transform>,
    encr: EncrAlg,
    ours: &[IntegAlg],
) -> Result<Option<IntegAlg>, Error> {
    if is_aead(encr) {
        match t {
            None => Ok(None),
            Some(t) if t.id == AUTH_NONE && t.key_length.is_none() => Ok(None),
            Some(_) => Err(Error::NoProposalChosen),
        }
    } else {
        t.and_then(integ_from_transform)
            .filter(|x| ours.contains(x))
            .map(Some)
            .ok_or(Error::NoProposalChosen)
    }
}

/// Initiator: validates the responder's ESP proposal against what we offered with
/// [`esp_offer`] (`pfs` as offered) and returns the suite and the responder's SPI.
pub fn check_esp_reply(
    reply: &[Proposal],
    ours: &[EspProposal],
    pfs: bool,
) -> Result<(NegotiatedEsp, Spi), Error> {
    let p = the_one(reply)?;
    if p.protocol != ProtocolId::Esp {
        return Err(Error::NoProposalChosen);
    }
    let spi = <[u8; 4]>::try_from(p.spi.as_slice())
        .map(|b| Spi(u32::from_be_bytes(b)))
        .map_err(|_| Error::InvalidField {
            field: "SA reply",
            detail: format!("ESP SPI of {} octets", p.spi.len()),
        })?;
    let o = offered(p, ours)?;
    only_known_kinds(
        p,
        &[
            Transform::ENCR,
            Transform::INTEG,
            Transform::DH,
            Transform::ESN,
        ],
    )?;
    let encr = chosen(p, Transform::ENCR, encr_from_transform, &o.encr)?;
    let integ = check_integ(single(p, Transform::INTEG)?, encr, &o.integ)?;
    let dh = match single(p, Transform::DH)? {
        None if pfs && !o.dh.is_empty() => return Err(Error::NoProposalChosen),
        None => None,
        Some(t) if t.id == DH_NONE && (!pfs || o.dh.is_empty()) => None,
        Some(t) => {
            if !pfs {
                return Err(Error::NoProposalChosen);
            }
            Some(
                dh_from_transform(t)
                    .filter(|g| o.dh.contains(g))
                    .ok_or(Error::NoProposalChosen)?,
            )
        }
    };
    let esn = match single(p, Transform::ESN)? {
        None => false,
        Some(t) if t.id == ESN_YES && o.esn => true,
        Some(t) if t.id == ESN_NO && !o.esn => false,
        Some(_) => return Err(Error::NoProposalChosen),
    };
    Ok((
        NegotiatedEsp {
            encr,
            integ,
            dh,
            esn,
        },
        spi,
    ))
}

// ---------------------------------------------------------------------------------------
// Traffic selectors (RFC 7296 2.9)
// ---------------------------------------------------------------------------------------

fn addr_key(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(v) => (false, u128::from(u32::from(v))),
        IpAddr::V6(v) => (true, u128::from(v)),
    }
}

fn addr_from(v6: bool, x: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(x.into())
    } else {
        // x came from an IPv4 address, so it fits 32 bits.
        IpAddr::V4(u32::try_from(x).unwrap_or(u32::MAX).into())
    }
}

/// Whether a selector is well formed: one address family, start <= end (addresses).
pub fn ts_is_valid(ts: &TrafficSelector) -> bool {
    let (s6, s) = addr_key(ts.start);
    let (e6, e) = addr_key(ts.end);
    s6 == e6 && s <= e
}

/// The intersection of two selectors (RFC 7296 2.9): common address range, protocol
/// (0 is any) and port range; `None` if they share nothing. OPAQUE ports (65535-0,
/// RFC 7296 3.13.1) are a subset of ANY (0-65535) and disjoint from every port range
/// (RFC 4301 4.4.1.1: they match only packets whose ports are unavailable).
pub fn ts_intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    if !ts_is_valid(a) || !ts_is_valid(b) {
        return None;
    }
    let (a6, a0) = addr_key(a.start);
    let (_, a1) = addr_key(a.end);
    let (b6, b0) = addr_key(b.start);
    let (_, b1) = addr_key(b.end);
    if a6 != b6 {
        return None;
    }
    let (s, e) = (a0.max(b0), a1.min(b1));
    if s > e {
        return None;
    }
    let protocol = match (a.protocol, b.protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    const ANY: (u16, u16) = (0, 65535);
    const OPAQUE: (u16, u16) = (65535, 0);
    let (pa, pb) = ((a.start_port, a.end_port), (b.start_port, b.end_port));
    let (ps, pe) = if pa == OPAQUE || pb == OPAQUE {
        if [pa, pb].iter().all(|p| *p == OPAQUE || *p == ANY) {
            OPAQUE
        } else {
            return None;
        }
    } else {
        let (ps, pe) = (pa.0.max(pb.0), pa.1.min(pb.1));
        if ps > pe {
            return None;
        }
        (ps, pe)
    };
    Some(TrafficSelector {
        start: addr_from(a6, s),
        end: addr_from(a6, e),
        protocol,
        start_port: ps,
        end_port: pe,
    })
}

/// A selector covering exactly one host, any protocol and port.
pub fn ts_host(addr: IpAddr) -> TrafficSelector {
    TrafficSelector {
        start: addr,
        end: addr,
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    }
}

/// A selector covering a whole address family (0.0.0.0/0 or ::/0), any protocol and port.
pub fn ts_any(v6: bool) -> TrafficSelector {
    let (start, end) = if v6 {
        (IpAddr::V6(0u128.into()), IpAddr::V6(u128::MAX.into()))
    } else {
        (IpAddr::V4(0u32.into()), IpAddr::V4(u32::MAX.into()))
    };
    TrafficSelector {
        start,
        end,
        protocol: 0,
        start_port: 0,
        end_port: 65535,
    }
}

/// Most selectors [`narrow`] returns per side. Narrowing may drop selectors (2.9), and this
/// keeps the answer well inside one TS payload (255) and the work per request bounded.
pub const MAX_NARROWED: usize = 32;

fn intersect_all(peer: &[TrafficSelector], allowed: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for p in peer {
        for a in allowed {
            if let Some(x) = ts_intersect(p, a) {
                if !out.contains(&x) {
                    out.push(x);
                    if out.len() == MAX_NARROWED {
                        return out;
                    }
                }
            }
        }
    }
    out
}

/// Responder narrowing (RFC 7296 2.9).
///
/// * TSr (our side) becomes the intersection of the peer's TSr with `local_ts`.
/// * TSi (the peer's side) becomes the intersection of the peer's TSi with its virtual
///   addresses `vips` (each a /32 or /128 host) when it was given any, as a client that
///   asked 0.0.0.0/0 with a CFG_REQUEST expects; without virtual addresses the peer's TSi
///   is kept (its own networks), minus malformed selectors. A driver that wants
///   strongSwan's `remote_ts = dynamic` for peers without a virtual IP passes the peer's
///   outer address as `vips`.
/// * At most [`MAX_NARROWED`] selectors per side, in the peer's order (so a first,
///   packet-specific selector stays first).
///
/// Nothing left on either side is [`Error::TsUnacceptable`] (TS_UNACCEPTABLE).
pub fn narrow(
    tsi: &[TrafficSelector],
    tsr: &[TrafficSelector],
    local_ts: &[TrafficSelector],
    vips: &[IpAddr],
) -> Result<(Vec<TrafficSelector>, Vec<TrafficSelector>), Error> {
    let out_i = if vips.is_empty() {
        tsi.iter()
            .filter(|t| ts_is_valid(t))
            .take(MAX_NARROWED)
            .cloned()
            .collect()
    } else {
        let hosts: Vec<TrafficSelector> = vips.iter().map(|v| ts_host(*v)).collect();
        intersect_all(tsi, &hosts)
    };
    let out_r = intersect_all(tsr, local_ts);
    if out_i.is_empty() || out_r.is_empty() {
        return Err(Error::TsUnacceptable);
    }
    Ok((out_i, out_r))
}

/// Initiator: checks that the responder's narrowed selectors lie within what we asked
/// (RFC 7296 2.9: the responder may only narrow). Every returned selector must be inside
/// one of ours.
pub fn ts_within(returned: &[TrafficSelector], asked: &[TrafficSelector]) -> bool {
    !returned.is_empty()
        && returned
            .iter()
            .all(|r| asked.iter().any(|a| ts_intersect(r, a).as_ref() == Some(r)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cloned_ref_to_slice_refs)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::message::{DecodeLimits, Message, NotifyType, Payload};

    fn ike(encr: &[EncrAlg], prf: &[PrfAlg], integ: &[IntegAlg], dh: &[DhGroup]) -> IkeProposal {
        IkeProposal {
            encr: encr.to_vec(),
            prf: prf.to_vec(),
            integ: integ.to_vec(),
            dh: dh.to_vec(),
        }
    }

    fn esp(encr: &[EncrAlg], integ: &[IntegAlg], dh: &[DhGroup], esn: bool) -> EspProposal {
        EspProposal {
            encr: encr.to_vec(),
            integ: integ.to_vec(),
            dh: dh.to_vec(),
            esn,
        }
    }

    fn t(kind: u8, id: u16, key_length: Option<u16>) -> Transform {
        Transform {
            kind,
            id,
            key_length,
        }
    }

    fn prop(number: u8, protocol: ProtocolId, spi: &[u8], transforms: &[Transform]) -> Proposal {
        Proposal {
            number,
            protocol,
            spi: spi.to_vec(),
            transforms: transforms.to_vec(),
        }
    }

    use DhGroup::*;
    use EncrAlg::*;
    use IntegAlg::*;
    use PrfAlg::*;

    #[test]
    fn transform_mapping_uses_iana_numbers_and_round_trips() {
        let encr = [
            (AesCbc(128), 12, Some(128)),
            (AesCbc(256), 12, Some(256)),
            (AesGcm16(128), 20, Some(128)),
            (AesGcm16(256), 20, Some(256)),
            (ChaCha20Poly1305, 28, None),
        ];
        for (a, id, kl) in encr {
            assert_eq!(encr_transform(a), t(1, id, kl));
            assert_eq!(encr_from_transform(&t(1, id, kl)), Some(a));
        }
        for (a, id) in [(HmacSha256, 5), (HmacSha384, 6), (HmacSha512, 7)] {
            assert_eq!(prf_transform(a), t(2, id, None));
            assert_eq!(prf_from_transform(&t(2, id, None)), Some(a));
        }
        for (a, id) in [
            (HmacSha256_128, 12),
            (HmacSha384_192, 13),
            (HmacSha512_256, 14),
        ] {
            assert_eq!(integ_transform(a), t(3, id, None));
            assert_eq!(integ_from_transform(&t(3, id, None)), Some(a));
        }
        for (a, id) in [(Modp2048, 14), (Ecp256, 19), (Ecp384, 20), (Curve25519, 31)] {
            assert_eq!(dh_transform(a), t(4, id, None));
            assert_eq!(dh_from_transform(&t(4, id, None)), Some(a));
            assert_eq!(dh_group_from_number(id), Some(a));
        }
        // Key length rules (RFC 7296 3.3.5, RFC 7634 2).
        assert_eq!(encr_from_transform(&t(1, 12, None)), None);
        assert_eq!(encr_from_transform(&t(1, 20, Some(192))), None);
        assert_eq!(encr_from_transform(&t(1, 28, Some(256))), None);
        assert_eq!(prf_from_transform(&t(2, 5, Some(128))), None);
        // Wrong transform type for the ID.
        assert_eq!(encr_from_transform(&t(2, 12, Some(128))), None);
        assert_eq!(integ_from_transform(&t(3, AUTH_NONE, None)), None);
        assert_eq!(dh_group_from_number(21), None);
    }

    #[test]
    fn ike_offer_select_and_check_agree() {
        let ours = vec![
            ike(&[AesGcm16(256)], &[HmacSha256], &[], &[Curve25519, Ecp256]),
            ike(&[AesCbc(128)], &[HmacSha256], &[HmacSha256_128], &[Ecp256]),
        ];
        let offer = ike_offer(&ours, &[]);
        assert_eq!(offer.len(), 2);
        assert_eq!(offer[0].number, 1);
        assert_eq!(
            offer[0].transforms,
            [
                t(1, 20, Some(256)),
                t(2, 5, None),
                t(4, 31, None),
                t(4, 19, None)
            ]
        );
        assert_eq!(
            offer[1].transforms,
            [
                t(1, 12, Some(128)),
                t(2, 5, None),
                t(3, 12, None),
                t(4, 19, None)
            ]
        );
        let (suite, chosen) = select_ike(&offer, &ours, Some(31)).unwrap();
        assert_eq!(
            suite,
            NegotiatedIke {
                encr: AesGcm16(256),
                prf: HmacSha256,
                integ: None,
                dh: Curve25519
            }
        );
        assert_eq!(chosen.number, 1);
        assert_eq!(
            chosen.transforms,
            [t(1, 20, Some(256)), t(2, 5, None), t(4, 31, None)]
        );
        assert_eq!(check_ike_reply(&[chosen], &ours).unwrap(), suite);

        // A responder that only takes the second proposal picks it and keeps its number.
        let responder = vec![ours[1].clone()];
        let (suite, chosen) = select_ike(&offer, &responder, None).unwrap();
        assert_eq!(chosen.number, 2);
        assert_eq!(suite.integ, Some(HmacSha256_128));
        assert_eq!(check_ike_reply(&[chosen], &ours).unwrap(), suite);
    }

    #[test]
    fn ke_group_preference_and_invalid_ke() {
        let ours = vec![ike(
            &[AesGcm16(128)],
            &[HmacSha256],
            &[],
            &[Ecp256, Curve25519],
        )];
        let offer = [prop(
            1,
            ProtocolId::Ike,
            &[],
            &[
                t(1, 20, Some(128)),
                t(2, 5, None),
                t(4, 19, None),
                t(4, 31, None),
            ],
        )];
        assert_eq!(select_ike(&offer, &ours, None).unwrap().0.dh, Ecp256);
        assert_eq!(
            select_ike(&offer, &ours, Some(31)).unwrap().0.dh,
            Curve25519
        );
        // KE with a group not in the chosen proposal: the first acceptable one is chosen
        // and the KE is answered with INVALID_KE_PAYLOAD naming it (RFC 7296 2.7).
        let (s, _) = select_ike(&offer, &ours, Some(14)).unwrap();
        let e = check_ke_group(s.dh, 14).unwrap_err();
        assert_eq!(e, Error::InvalidKePayload { got: 14, want: 19 });
        assert_eq!(NotifyType::try_from(&e), Ok(NotifyType::INVALID_KE_PAYLOAD));
        assert!(check_ke_group(Curve25519, 31).is_ok());
        assert_eq!(acceptable_group(&offer, &ours), Some(Ecp256));
        let only_x = vec![ike(&[AesGcm16(128)], &[HmacSha256], &[], &[Curve25519])];
        assert_eq!(acceptable_group(&offer, &only_x), Some(Curve25519));
        let none = vec![ike(&[AesGcm16(128)], &[HmacSha256], &[], &[Ecp384])];
        assert_eq!(acceptable_group(&offer, &none), None);
    }

    #[test]
    fn responder_takes_first_acceptable_offered_proposal() {
        let ours = vec![ike(
            &[AesCbc(256), AesGcm16(256)],
            &[HmacSha384],
            &[HmacSha384_192],
            &[Ecp384],
        )];
        let offer = [
            // Unknown cipher (3DES) only.
            prop(
                1,
                ProtocolId::Ike,
                &[],
                &[t(1, 3, None), t(2, 6, None), t(3, 13, None), t(4, 20, None)],
            ),
            // Acceptable.
            prop(
                2,
                ProtocolId::Ike,
                &[],
                &[
                    t(1, 12, Some(256)),
                    t(2, 6, None),
                    t(3, 13, None),
                    t(4, 20, None),
                ],
            ),
            // Also acceptable, but later.
            prop(
                3,
                ProtocolId::Ike,
                &[],
                &[t(1, 20, Some(256)), t(2, 6, None), t(4, 20, None)],
            ),
        ];
        let (s, chosen) = select_ike(&offer, &ours, None).unwrap();
        assert_eq!(chosen.number, 2);
        assert_eq!(s.encr, AesCbc(256));
        // Key length respected: AES-256 only, AES-128 offered.
        let offer128 = [prop(
            1,
            ProtocolId::Ike,
            &[],
            &[
                t(1, 12, Some(128)),
                t(2, 6, None),
                t(3, 13, None),
                t(4, 20, None),
            ],
        )];
        assert_eq!(
            select_ike(&offer128, &ours, None),
            Err(Error::NoProposalChosen)
        );
        // Missing a transform type (no PRF).
        let no_prf = [prop(
            1,
            ProtocolId::Ike,
            &[],
            &[t(1, 12, Some(256)), t(3, 13, None), t(4, 20, None)],
        )];
        assert_eq!(
            select_ike(&no_prf, &ours, None),
            Err(Error::NoProposalChosen)
        );
        // Wrong protocol or SPI size.
        let esp_p = [prop(1, ProtocolId::Esp, &[], &offer[1].transforms)];
        assert_eq!(
            select_ike(&esp_p, &ours, None),
            Err(Error::NoProposalChosen)
        );
        let bad_spi = [prop(
            1,
            ProtocolId::Ike,
            &[1, 2, 3, 4],
            &offer[1].transforms,
        )];
        assert_eq!(
            select_ike(&bad_spi, &ours, None),
            Err(Error::NoProposalChosen)
        );
        // A rekey offer carries an 8-octet SPI, echoed back for the caller to replace.
        let rekey = [prop(1, ProtocolId::Ike, &[9; 8], &offer[1].transforms)];
        assert_eq!(select_ike(&rekey, &ours, None).unwrap().1.spi, vec![9; 8]);
    }

    #[test]
    fn aead_takes_no_integrity() {
        let ours = vec![ike(
            &[AesGcm16(256), AesCbc(256)],
            &[HmacSha256],
            &[HmacSha256_128],
            &[Curve25519],
        )];
        // AEAD with a real integrity transform is not usable as AEAD; the only other cipher
        // offered is... none, so nothing.
        let bad = [prop(
            1,
            ProtocolId::Ike,
            &[],
            &[
                t(1, 20, Some(256)),
                t(2, 5, None),
                t(3, 12, None),
                t(4, 31, None),
            ],
        )];
        assert_eq!(select_ike(&bad, &ours, None), Err(Error::NoProposalChosen));
        // AEAD with INTEG NONE is fine and NONE is echoed.
        let none = [prop(
            1,
            ProtocolId::Ike,
            &[],
            &[
                t(1, 20, Some(256)),
                t(2, 5, None),
                t(3, 0, None),
                t(4, 31, None),
            ],
        )];
        let (s, c) = select_ike(&none, &ours, None).unwrap();
        assert_eq!(s.integ, None);
        assert_eq!(c.transforms[2], t(3, 0, None));
        assert_eq!(check_ike_reply(&[c], &ours).unwrap(), s);
        // A mixed proposal (AEAD + CBC + integrity) yields the CBC suite.
        let mixed = [prop(
            1,
            ProtocolId::Ike,
            &[],
            &[
                t(1, 20, Some(256)),
                t(1, 12, Some(256)),
                t(2, 5, None),
                t(3, 12, None),
                t(4, 31, None),
            ],
        )];
        let (s, _) = select_ike(&mixed, &ours, None).unwrap();
        assert_eq!((s.encr, s.integ), (AesCbc(256), Some(HmacSha256_128)));
        // CBC without any integrity transform is unacceptable.
        let cbc_only = [prop(
            1,
            ProtocolId::Ike,
            &[],
            &[t(1, 12, Some(256)), t(2, 5, None), t(4, 31, None)],
        )];
        assert_eq!(
            select_ike(&cbc_only, &ours, None),
            Err(Error::NoProposalChosen)
        );
    }

    #[test]
    fn negotiates_real_strongswan_default_offer() {
        let m = Message::decode(
            &crate::message::tests::STRONGSWAN_INIT_DEFAULT,
            &DecodeLimits::default(),
        )
        .unwrap();
        let Payload::Sa(offer) = &m.payloads[0] else {
            panic!("no SA")
        };
        let gcm = vec![ike(&[AesGcm16(256)], &[HmacSha256], &[], &[Curve25519])];
        let (s, c) = select_ike(offer, &gcm, Some(31)).unwrap();
        assert_eq!(c.number, 2);
        assert_eq!(
            s,
            NegotiatedIke {
                encr: AesGcm16(256),
                prf: HmacSha256,
                integ: None,
                dh: Curve25519
            }
        );
        let cbc = vec![ike(
            &[AesCbc(128)],
            &[HmacSha512],
            &[HmacSha256_128],
            &[Curve25519],
        )];
        let (s, c) = select_ike(offer, &cbc, Some(31)).unwrap();
        assert_eq!(c.number, 1);
        assert_eq!(
            c.transforms,
            [
                t(1, 12, Some(128)),
                t(2, 7, None),
                t(3, 12, None),
                t(4, 31, None)
            ]
        );
        assert_eq!(s.integ, Some(HmacSha256_128));
        // strongSwan's default offer has no MODP-2048 in this build: INVALID_KE is not the
        // answer, NO_PROPOSAL_CHOSEN is.
        let modp = vec![ike(
            &[AesCbc(128)],
            &[HmacSha256],
            &[HmacSha256_128],
            &[Modp2048],
        )];
        assert_eq!(
            select_ike(offer, &modp, Some(31)),
            Err(Error::NoProposalChosen)
        );
    }

    fn sa_of(bytes: &[u8]) -> Vec<Proposal> {
        let m = Message::decode(bytes, &DecodeLimits::default()).unwrap();
        match &m.payloads[0] {
            Payload::Sa(p) => p.clone(),
            other => panic!("first payload is {other:?}"),
        }
    }

    /// Our initiator-side validation accepts what charon really chose for the offer it got.
    #[test]
    fn check_ike_reply_accepts_real_strongswan_choice() {
        use crate::message::tests::*;
        let ours = vec![ike(&[AesGcm16(256)], &[HmacSha256], &[], &[Curve25519])];
        // The captured request is exactly our offer for this configuration.
        assert_eq!(sa_of(&STRONGSWAN_INIT_GCM), ike_offer(&ours, &[]));
        let reply = sa_of(&STRONGSWAN_RESP_GCM);
        assert_eq!(
            check_ike_reply(&reply, &ours).unwrap(),
            NegotiatedIke {
                encr: AesGcm16(256),
                prf: HmacSha256,
                integ: None,
                dh: Curve25519
            }
        );
        // And our responder makes the same choice charon made.
        let (_, chosen) = select_ike(&sa_of(&STRONGSWAN_INIT_GCM), &ours, Some(31)).unwrap();
        assert_eq!(vec![chosen], reply);
        // The same reply does not satisfy an initiator that offered only AES-CBC.
        let cbc = vec![ike(
            &[AesCbc(256)],
            &[HmacSha256],
            &[HmacSha256_128],
            &[Curve25519],
        )];
        assert_eq!(check_ike_reply(&reply, &cbc), Err(Error::NoProposalChosen));
    }

    /// Our responder, given charon's real IKE_AUTH request, makes the choices charon's own
    /// responder made: ESP proposal 1 (AES-GCM-256, no ESN) and TS 10.1.0.1/32 ===
    /// 10.200.0.0/16; our initiator accepts charon's real answer.
    #[test]
    fn ike_auth_choices_match_strongswan() {
        use crate::message::tests::*;
        use crate::message::{cfg_address, decode_payloads, payload_type};
        let l = DecodeLimits::default();
        let req = decode_payloads(payload_type::IDI, &STRONGSWAN_AUTH_REQ_INNER, &l).unwrap();
        let resp = decode_payloads(payload_type::IDR, &STRONGSWAN_AUTH_RESP_INNER, &l).unwrap();
        let find_sa = |p: &[Payload]| {
            p.iter()
                .find_map(|x| match x {
                    Payload::Sa(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let find_ts = |p: &[Payload], initiator: bool| {
            p.iter()
                .find_map(|x| match (x, initiator) {
                    (Payload::TsI(t), true) | (Payload::TsR(t), false) => Some(t.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let ours = vec![
            esp(&[AesGcm16(256)], &[], &[], false),
            esp(&[AesCbc(128)], &[HmacSha256_128], &[], false),
        ];
        let (suite, mut chosen, _) = select_esp(&find_sa(&req), &ours, false, None).unwrap();
        assert_eq!(
            suite,
            NegotiatedEsp {
                encr: AesGcm16(256),
                integ: None,
                dh: None,
                esn: false
            }
        );
        let charon_sa = find_sa(&resp);
        chosen.spi = charon_sa[0].spi.clone();
        assert_eq!(vec![chosen], charon_sa);
        assert_eq!(check_esp_reply(&charon_sa, &ours, false).unwrap().0, suite);

        let vip = resp
            .iter()
            .find_map(|x| match x {
                Payload::Cfg { attributes, .. } => attributes.iter().find_map(cfg_address),
                _ => None,
            })
            .unwrap();
        let local = [ts("10.200.0.0", "10.200.255.255", 0, (0, 65535))];
        let (tsi, tsr) =
            narrow(&find_ts(&req, true), &find_ts(&req, false), &local, &[vip]).unwrap();
        assert_eq!(tsi, find_ts(&resp, true));
        assert_eq!(tsr, find_ts(&resp, false));
        // And the initiator's check: charon only narrowed what was asked.
        assert!(ts_within(&find_ts(&resp, true), &find_ts(&req, true)));
        assert!(ts_within(&find_ts(&resp, false), &find_ts(&req, false)));
    }

    /// charon insists on its preferred group with INVALID_KE_PAYLOAD even when the KE it
    /// got is acceptable; our responder takes the KE's group instead (2.7 allows both).
    #[test]
    fn ke_group_of_real_request_is_preferred() {
        use crate::message::tests::*;
        let offer = sa_of(&REQUEST_KE31_OFFER_19_31);
        let ours = vec![ike(
            &[AesGcm16(256)],
            &[HmacSha256],
            &[],
            &[Ecp256, Curve25519],
        )];
        let (s, chosen) = select_ike(&offer, &ours, Some(31)).unwrap();
        assert_eq!(s.dh, Curve25519);
        assert!(check_ke_group(s.dh, 31).is_ok());
        assert_eq!(
            chosen
                .transforms
                .iter()
                .filter(|t| t.kind == Transform::DH)
                .count(),
            1
        );
        // charon's answer names group 19, which this offer included: the initiator retries.
        let m = Message::decode(&STRONGSWAN_RESP_INVALID_KE, &DecodeLimits::default()).unwrap();
        let n = m.notify(NotifyType::INVALID_KE_PAYLOAD).unwrap();
        let want = u16::from_be_bytes([n.data[0], n.data[1]]);
        assert_eq!(dh_group_from_number(want), Some(Ecp256));
        let retry = ike_offer_preferring(&ours, &[], Ecp256);
        assert_eq!(retry[0].transforms[2], t(4, 19, None));
    }

    #[test]
    fn check_ike_reply_rejects_what_we_did_not_offer() {
        let ours = vec![ike(&[AesGcm16(256)], &[HmacSha256], &[], &[Curve25519])];
        let good = prop(
            1,
            ProtocolId::Ike,
            &[],
            &[t(1, 20, Some(256)), t(2, 5, None), t(4, 31, None)],
        );
        assert!(check_ike_reply(std::slice::from_ref(&good), &ours).is_ok());
        let mut two = good.clone();
        two.transforms.push(t(4, 19, None));
        assert!(matches!(
            check_ike_reply(&[two], &ours),
            Err(Error::InvalidField { .. })
        ));
        assert!(matches!(
            check_ike_reply(&[good.clone(), good.clone()], &ours),
            Err(Error::InvalidField { .. })
        ));
        assert!(matches!(
            check_ike_reply(&[], &ours),
            Err(Error::InvalidField { .. })
        ));
        let mut num = good.clone();
        num.number = 2;
        assert_eq!(check_ike_reply(&[num], &ours), Err(Error::NoProposalChosen));
        let mut kl = good.clone();
        kl.transforms[0] = t(1, 20, Some(128));
        assert_eq!(check_ike_reply(&[kl], &ours), Err(Error::NoProposalChosen));
        let mut no_dh = good.clone();
        no_dh.transforms.pop();
        assert_eq!(
            check_ike_reply(&[no_dh], &ours),
            Err(Error::NoProposalChosen)
        );
        let mut integ = good.clone();
        integ.transforms.push(t(3, 12, None));
        assert_eq!(
            check_ike_reply(&[integ], &ours),
            Err(Error::NoProposalChosen)
        );
        let mut esn = good;
        esn.transforms.push(t(5, 0, None));
        assert!(matches!(
            check_ike_reply(&[esn], &ours),
            Err(Error::InvalidField { .. })
        ));
    }

    #[test]
    fn esp_selection_ike_auth_and_create_child_sa() {
        let ours = vec![esp(&[AesGcm16(256)], &[], &[Curve25519], false)];
        let spi = Spi(0xc0ff_ee01);
        // IKE_AUTH: the offer carries no DH; ours lists a PFS group, which is ignored there.
        let offer = esp_offer(&ours, spi, false);
        assert_eq!(offer[0].transforms, [t(1, 20, Some(256)), t(5, 0, None)]);
        assert_eq!(offer[0].spi, spi.0.to_be_bytes());
        let (s, chosen, peer) = select_esp(&offer, &ours, false, None).unwrap();
        assert_eq!(peer, spi);
        assert_eq!(
            s,
            NegotiatedEsp {
                encr: AesGcm16(256),
                integ: None,
                dh: None,
                esn: false
            }
        );
        let mut reply = chosen.clone();
        reply.spi = 0x1234_5678u32.to_be_bytes().to_vec();
        assert_eq!(
            check_esp_reply(&[reply], &ours, false).unwrap(),
            (s, Spi(0x1234_5678))
        );
        // DH transforms in an IKE_AUTH offer are ignored (RFC 7296 1.2).
        let with_dh = esp_offer(&ours, spi, true);
        let (s, chosen, _) = select_esp(&with_dh, &ours, false, None).unwrap();
        assert_eq!(s.dh, None);
        assert!(chosen.transforms.iter().all(|t| t.kind != Transform::DH));
        // CREATE_CHILD_SA with PFS: the group is negotiated.
        let (s, chosen, _) = select_esp(&with_dh, &ours, true, Some(31)).unwrap();
        assert_eq!(s.dh, Some(Curve25519));
        assert!(chosen.transforms.contains(&t(4, 31, None)));
        assert_eq!(check_esp_reply(&[chosen], &ours, true).unwrap().0, s);
        // CREATE_CHILD_SA without a KE while we require PFS: refused.
        assert_eq!(
            select_esp(&offer, &ours, true, None).map(|x| x.0),
            Err(Error::NoProposalChosen)
        );
        // Without PFS configured, an offer with DH NONE is accepted.
        let no_pfs = vec![esp(&[AesGcm16(256)], &[], &[], false)];
        let none = [prop(
            1,
            ProtocolId::Esp,
            &[0, 0, 0, 1],
            &[t(1, 20, Some(256)), t(4, 0, None), t(5, 0, None)],
        )];
        let (s, c, _) = select_esp(&none, &no_pfs, true, None).unwrap();
        assert_eq!(s.dh, None);
        assert!(c.transforms.contains(&t(4, 0, None)));
        // ... but not one with only a real group.
        assert!(select_esp(&with_dh, &no_pfs, true, Some(31)).is_err());
        // SPI must be four octets.
        let bad = [prop(1, ProtocolId::Esp, &[1, 2, 3], &offer[0].transforms)];
        assert_eq!(
            select_esp(&bad, &ours, false, None).map(|x| x.0),
            Err(Error::NoProposalChosen)
        );
    }

    #[test]
    fn esp_cbc_and_esn() {
        let ours = vec![esp(&[AesCbc(256)], &[HmacSha512_256], &[], true)];
        let offer = esp_offer(&ours, Spi(7), false);
        assert_eq!(
            offer[0].transforms,
            [t(1, 12, Some(256)), t(3, 14, None), t(5, 1, None)]
        );
        let (s, c, _) = select_esp(&offer, &ours, false, None).unwrap();
        assert_eq!(
            s,
            NegotiatedEsp {
                encr: AesCbc(256),
                integ: Some(HmacSha512_256),
                dh: None,
                esn: true
            }
        );
        assert_eq!(check_esp_reply(&[c], &ours, false).unwrap().0, s);
        // Peer offers both: ours with ESN prefers ESN; ours without takes no-ESN.
        let both = [prop(
            1,
            ProtocolId::Esp,
            &[0, 0, 0, 9],
            &[
                t(1, 12, Some(256)),
                t(3, 14, None),
                t(5, 0, None),
                t(5, 1, None),
            ],
        )];
        assert!(select_esp(&both, &ours, false, None).unwrap().0.esn);
        let no_esn = vec![esp(&[AesCbc(256)], &[HmacSha512_256], &[], false)];
        let (s, c, _) = select_esp(&both, &no_esn, false, None).unwrap();
        assert!(!s.esn);
        assert_eq!(c.transforms.last(), Some(&t(5, 0, None)));
        // Peer insists on ESN, we do not do it.
        assert!(select_esp(&offer, &no_esn, false, None).is_err());
        // Reply with ESN we did not offer.
        let mut r = c;
        r.transforms.pop();
        r.transforms.push(t(5, 1, None));
        assert_eq!(
            check_esp_reply(&[r], &no_esn, false).map(|x| x.0),
            Err(Error::NoProposalChosen)
        );
    }

    fn ts(a: &str, b: &str, protocol: u8, ports: (u16, u16)) -> TrafficSelector {
        TrafficSelector {
            start: a.parse().unwrap(),
            end: b.parse().unwrap(),
            protocol,
            start_port: ports.0,
            end_port: ports.1,
        }
    }

    #[test]
    fn narrowing_to_virtual_ip_and_local_networks() {
        let any4 = ts_any(false);
        let local = vec![ts("10.200.0.0", "10.200.255.255", 0, (0, 65535))];
        let vip: IpAddr = Ipv4Addr::new(10, 1, 0, 5).into();
        let (i, r) = narrow(&[any4.clone()], &[any4.clone()], &local, &[vip]).unwrap();
        assert_eq!(i, vec![ts_host(vip)]);
        assert_eq!(r, local);
        // The peer asks for something narrower on our side: it keeps its narrowing.
        let web = ts("10.200.1.0", "10.200.1.255", 6, (443, 443));
        let (_, r) = narrow(&[any4.clone()], std::slice::from_ref(&web), &local, &[vip]).unwrap();
        assert_eq!(r, vec![web]);
        // Outside our networks: TS_UNACCEPTABLE.
        let other = ts("192.168.0.0", "192.168.0.255", 0, (0, 65535));
        let e = narrow(&[any4.clone()], &[other], &local, &[vip]).unwrap_err();
        assert_eq!(e, Error::TsUnacceptable);
        assert_eq!(NotifyType::try_from(&e), Ok(NotifyType::TS_UNACCEPTABLE));
        // TSi that does not contain the virtual IP.
        let elsewhere = ts("172.16.0.0", "172.16.0.255", 0, (0, 65535));
        assert_eq!(
            narrow(&[elsewhere], &[any4.clone()], &local, &[vip]),
            Err(Error::TsUnacceptable)
        );
        // Without virtual IPs the peer's own networks stand.
        let site = ts("192.168.7.0", "192.168.7.255", 0, (0, 65535));
        let (i, _) = narrow(std::slice::from_ref(&site), &[any4.clone()], &local, &[]).unwrap();
        assert_eq!(i, vec![site]);
        // IPv6: dual-stack local networks and two virtual addresses.
        let any6 = ts_any(true);
        let local6 = ts("2001:db8:200::", "2001:db8:200::ffff", 0, (0, 65535));
        let vip6: IpAddr = "2001:db8:1::5".parse::<Ipv6Addr>().unwrap().into();
        let (i, r) = narrow(
            &[any4.clone(), any6.clone()],
            &[any4, any6],
            &[local[0].clone(), local6.clone()],
            &[vip, vip6],
        )
        .unwrap();
        assert_eq!(i, vec![ts_host(vip), ts_host(vip6)]);
        assert_eq!(r, vec![local[0].clone(), local6]);
        // Protocol mismatch and disjoint ports.
        let udp53 = ts("10.200.0.0", "10.200.255.255", 17, (53, 53));
        let tcp = ts("0.0.0.0", "255.255.255.255", 6, (0, 65535));
        assert_eq!(ts_intersect(&udp53, &tcp), None);
        let high = ts("0.0.0.0", "255.255.255.255", 0, (1024, 65535));
        assert_eq!(ts_intersect(&udp53, &high), None);
        // A reversed (malformed) selector intersects nothing.
        let rev = ts("10.0.0.9", "10.0.0.1", 0, (0, 65535));
        assert_eq!(ts_intersect(&rev, &ts_any(false)), None);
        assert!(ts_within(&[ts_host(vip)], &[ts_any(false)]));
        assert!(!ts_within(&[ts_any(false)], &[ts_host(vip)]));
        assert!(!ts_within(&[], &[ts_any(false)]));
    }

    /// RFC 4301 4.4.1.1 port semantics in narrowing: ICMP type/code ranges narrow like
    /// ports, OPAQUE survives ANY and nothing else, a second CHILD SA's narrower
    /// selectors to the same networks stand beside the first.
    #[test]
    fn narrowing_keeps_icmp_types_and_opaque_ports() {
        let any = (0, 65535);
        let opaque = (65535, 0);
        let inside = |p: u8, ports: (u16, u16)| ts("10.200.0.0", "10.200.255.255", p, ports);
        let local = vec![inside(0, any)];
        let vip: IpAddr = Ipv4Addr::new(10, 1, 0, 5).into();
        // strongSwan `10.200.0.0/16[icmp/8]`: echo request, any code (type<<8 | code).
        let echo = inside(1, (0x0800, 0x08ff));
        let (i, r) = narrow(
            &[ts_any(false)],
            std::slice::from_ref(&echo),
            &local,
            &[vip],
        )
        .unwrap();
        assert_eq!((i, r), (vec![ts_host(vip)], vec![echo.clone()]));
        // The peer's TSi names a protocol: it stays on the virtual IP.
        let tcp_any = ts("0.0.0.0", "255.255.255.255", 6, any);
        let (i, _) = narrow(&[tcp_any], &[inside(6, (5201, 5201))], &local, &[vip]).unwrap();
        assert_eq!(i, vec![ts("10.1.0.5", "10.1.0.5", 6, any)]);
        // OPAQUE: kept against ANY, refused against a port range.
        let tcp_opaque = inside(6, opaque);
        assert_eq!(
            ts_intersect(&tcp_opaque, &local[0]),
            Some(tcp_opaque.clone())
        );
        assert_eq!(
            ts_intersect(&tcp_opaque, &tcp_opaque),
            Some(tcp_opaque.clone())
        );
        assert_eq!(ts_intersect(&tcp_opaque, &inside(6, (80, 80))), None);
        assert_eq!(ts_intersect(&inside(0, (0, 1023)), &tcp_opaque), None);
        let (_, r) = narrow(
            &[ts_any(false)],
            std::slice::from_ref(&tcp_opaque),
            &local,
            &[vip],
        )
        .unwrap();
        assert_eq!(r, vec![tcp_opaque.clone()]);
        assert!(ts_within(&r, std::slice::from_ref(&tcp_opaque)));
        // A local_ts limited to ports refuses OPAQUE (nothing left: TS_UNACCEPTABLE).
        assert_eq!(
            narrow(
                &[ts_any(false)],
                &[tcp_opaque],
                &[inside(6, (80, 80))],
                &[vip]
            ),
            Err(Error::TsUnacceptable)
        );
    }

    #[test]
    fn narrowing_output_is_bounded() {
        // 64 x 64 distinct intersections would not fit a reply; the answer is capped.
        let peer: Vec<TrafficSelector> = (0..64u16)
            .map(|p| ts("0.0.0.0", "255.255.255.255", 6, (p, p)))
            .collect();
        let local: Vec<TrafficSelector> = (0..64u8)
            .map(|i| {
                let a = format!("10.0.{i}.0");
                let b = format!("10.0.{i}.255");
                ts(&a, &b, 0, (0, 65535))
            })
            .collect();
        let (i, r) = narrow(&peer, &peer, &local, &[]).unwrap();
        assert_eq!((i.len(), r.len()), (MAX_NARROWED, MAX_NARROWED));
        assert_eq!(r[0], ts("10.0.0.0", "10.0.0.255", 6, (0, 0)));
        assert!(ts_within(&r, &local) && ts_within(&r, &peer));
    }

    fn subset<T: Copy>(rng: &mut rand_chacha::ChaCha8Rng, all: &[T], min: usize) -> Vec<T> {
        let mut v: Vec<T> = all.iter().copied().filter(|_| rng.gen_bool(0.5)).collect();
        while v.len() < min {
            v.push(all[rng.gen_range(0..all.len())]);
        }
        v
    }

    const ENCRS: [EncrAlg; 5] = [
        AesCbc(128),
        AesCbc(256),
        AesGcm16(128),
        AesGcm16(256),
        ChaCha20Poly1305,
    ];
    const PRFS: [PrfAlg; 3] = [HmacSha256, HmacSha384, HmacSha512];
    const INTEGS: [IntegAlg; 3] = [HmacSha256_128, HmacSha384_192, HmacSha512_256];
    const GROUPS: [DhGroup; 4] = [Modp2048, Ecp256, Ecp384, Curve25519];

    fn random_ike(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<IkeProposal> {
        (0..rng.gen_range(1..4))
            .map(|_| IkeProposal {
                encr: subset(rng, &ENCRS, 1),
                prf: subset(rng, &PRFS, 1),
                integ: subset(rng, &INTEGS, 0),
                dh: subset(rng, &GROUPS, 1),
            })
            .collect()
    }

    fn random_esp(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<EspProposal> {
        (0..rng.gen_range(1..4))
            .map(|_| EspProposal {
                encr: subset(rng, &ENCRS, 1),
                integ: subset(rng, &INTEGS, 0),
                dh: subset(rng, &GROUPS, 0),
                esn: rng.gen(),
            })
            .collect()
    }

    /// Property: for random initiator and responder configurations, whatever our responder
    /// selects from our initiator's offer, our initiator's reply check accepts with the
    /// same suite; the suite is allowed by both configurations; and the KE group is the
    /// one sent whenever the responder could take it.
    #[test]
    fn responder_choice_always_passes_initiator_check() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2_7);
        let (mut ike_ok, mut esp_ok) = (0, 0);
        for _ in 0..4000 {
            let (ci, cr) = (random_ike(&mut rng), random_ike(&mut rng));
            let ke = GROUPS[rng.gen_range(0..4)];
            let offer = ike_offer_preferring(&ci, &[], ke);
            if let Ok((suite, chosen)) = select_ike(&offer, &cr, Some(dh_group_number(ke))) {
                ike_ok += 1;
                assert_eq!(
                    check_ike_reply(&[chosen.clone()], &ci),
                    Ok(suite),
                    "{ci:?} {cr:?}"
                );
                let o = &cr.iter().find(|o| {
                    o.encr.contains(&suite.encr)
                        && o.prf.contains(&suite.prf)
                        && o.dh.contains(&suite.dh)
                });
                assert!(o.is_some());
                assert_eq!(suite.integ.is_none(), is_aead(suite.encr));
                // Only one transform per type in the answer.
                for kind in 1..=5 {
                    assert!(chosen.transforms.iter().filter(|t| t.kind == kind).count() <= 1);
                }
                // The KE's group is chosen whenever one of our proposals could take the
                // chosen offered proposal with it (no needless INVALID_KE round trip).
                let p = &offer[usize::from(chosen.number) - 1];
                let could = cr.iter().any(|o| {
                    o.dh.contains(&ke)
                        && select_ike(
                            std::slice::from_ref(p),
                            &[IkeProposal {
                                dh: vec![ke],
                                ..o.clone()
                            }],
                            None,
                        )
                        .is_ok()
                });
                assert_eq!(suite.dh == ke, could, "{p:?} {cr:?} ke {ke:?}");
            }
            let (ei, er) = (random_esp(&mut rng), random_esp(&mut rng));
            let pfs = rng.gen_bool(0.5);
            let spi = Spi(rng.gen());
            let offer = esp_offer(&ei, spi, pfs);
            if let Ok((suite, mut chosen, peer_spi)) = select_esp(&offer, &er, pfs, None) {
                esp_ok += 1;
                assert_eq!(peer_spi, spi);
                chosen.spi = vec![1, 2, 3, 4];
                let (s, rspi) = check_esp_reply(&[chosen], &ei, pfs).unwrap();
                assert_eq!((s, rspi), (suite, Spi(0x0102_0304)));
                assert_eq!(suite.integ.is_none(), is_aead(suite.encr));
                if !pfs {
                    assert_eq!(suite.dh, None);
                }
            }
        }
        // Both outcomes must be common, or the property says little.
        assert!(ike_ok > 400 && ike_ok < 3600, "{ike_ok}");
        assert!(esp_ok > 400 && esp_ok < 3600, "{esp_ok}");
    }

    fn random_ts(rng: &mut rand_chacha::ChaCha8Rng, v6: bool) -> TrafficSelector {
        // Small ranges near each other so that intersections are common.
        let base: u128 = if v6 { 0x2001_0db8 << 96 } else { 0x0a00_0000 };
        let a = base + rng.gen_range(0..64u128);
        let b = a + rng.gen_range(0..32u128);
        let p0 = rng.gen_range(0..50u16);
        let p1 = p0 + rng.gen_range(0..50u16);
        TrafficSelector {
            start: addr_from(v6, a),
            end: addr_from(v6, b),
            protocol: [0, 6, 17][rng.gen_range(0..3)],
            start_port: p0,
            end_port: p1,
        }
    }

    fn contains(ts: &TrafficSelector, v6: bool, addr: u128, proto: u8, port: u16) -> bool {
        let (s6, s) = addr_key(ts.start);
        let (_, e) = addr_key(ts.end);
        s6 == v6
            && (s..=e).contains(&addr)
            && (ts.protocol == 0 || ts.protocol == proto)
            && (ts.start_port..=ts.end_port).contains(&port)
    }

    /// Property (RFC 7296 2.9): a packet matches the intersection exactly when it matches
    /// both selectors, for random IPv4 and IPv6 selectors, protocols and port ranges.
    #[test]
    fn intersection_is_exactly_the_common_packets() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2_9);
        for case in 0..3000 {
            let v6 = case % 2 == 1;
            let (a, b) = (random_ts(&mut rng, v6), random_ts(&mut rng, v6));
            let x = ts_intersect(&a, &b);
            let base: u128 = if v6 { 0x2001_0db8 << 96 } else { 0x0a00_0000 };
            for _ in 0..40 {
                let addr = base + rng.gen_range(0..100u128);
                let proto = [1, 6, 17][rng.gen_range(0..3)];
                let port = rng.gen_range(0..100u16);
                let both =
                    contains(&a, v6, addr, proto, port) && contains(&b, v6, addr, proto, port);
                // A protocol-0 intersection of two protocol-0 selectors matches any protocol.
                let inx = x
                    .as_ref()
                    .is_some_and(|x| contains(x, v6, addr, proto, port));
                assert_eq!(
                    inx, both,
                    "{a:?} & {b:?} = {x:?} at {addr:x}/{proto}/{port}"
                );
            }
            if let Some(x) = &x {
                assert!(ts_within(std::slice::from_ref(x), std::slice::from_ref(&a)));
                assert!(ts_within(std::slice::from_ref(x), std::slice::from_ref(&b)));
            }
            // Different families never intersect.
            assert_eq!(ts_intersect(&a, &random_ts(&mut rng, !v6)), None);
        }
    }
}
