//! The engine's view of proposal negotiation (RFC 7296 2.7, 3.3.6) and traffic selector
//! narrowing (2.9): a thin adapter so the state machine has one place that talks to
//! `crate::negotiate`.
use std::net::IpAddr;

use crate::config::{DhGroup, EncrAlg, EspProposal, IkeProposal, IntegAlg, PrfAlg};
use crate::crypto::{group_number, IkeSuite};
use crate::error::Error;
use crate::event::{Spi, TrafficSelector};
use crate::message::{Proposal, ProtocolId, Transform};

/// A negotiated ESP suite (RFC 7296 3.3.2 transform types 1, 3, 4, 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EspSuite {
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub dh: Option<DhGroup>,
    pub esn: bool,
}

fn encr_t(e: EncrAlg) -> Transform {
    match e {
        EncrAlg::AesCbc(b) => Transform {
            kind: Transform::ENCR,
            id: 12,
            key_length: Some(b),
        },
        EncrAlg::AesGcm16(b) => Transform {
            kind: Transform::ENCR,
            id: 20,
            key_length: Some(b),
        },
        EncrAlg::ChaCha20Poly1305 => Transform {
            kind: Transform::ENCR,
            id: 28,
            key_length: None,
        },
    }
}

fn prf_t(p: PrfAlg) -> Transform {
    let id = match p {
        PrfAlg::HmacSha256 => 5,
        PrfAlg::HmacSha384 => 6,
        PrfAlg::HmacSha512 => 7,
    };
    Transform {
        kind: Transform::PRF,
        id,
        key_length: None,
    }
}

fn integ_t(i: IntegAlg) -> Transform {
    let id = match i {
        IntegAlg::HmacSha256_128 => 12,
        IntegAlg::HmacSha384_192 => 13,
        IntegAlg::HmacSha512_256 => 14,
    };
    Transform {
        kind: Transform::INTEG,
        id,
        key_length: None,
    }
}

fn dh_t(g: DhGroup) -> Transform {
    Transform {
        kind: Transform::DH,
        id: group_number(g),
        key_length: None,
    }
}

fn is_aead(e: EncrAlg) -> bool {
    !matches!(e, EncrAlg::AesCbc(_))
}

/// Wire proposals for IKE_SA_INIT (numbered from 1, no SPI).
pub(crate) fn ike_offer(props: &[IkeProposal]) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut t: Vec<Transform> = p.encr.iter().map(|e| encr_t(*e)).collect();
            t.extend(p.prf.iter().map(|x| prf_t(*x)));
            t.extend(p.integ.iter().map(|x| integ_t(*x)));
            t.extend(p.dh.iter().map(|x| dh_t(*x)));
            Proposal {
                number: (i + 1) as u8,
                protocol: ProtocolId::Ike,
                spi: vec![],
                transforms: t,
            }
        })
        .collect()
}

/// IKE proposals for a rekey, with `group` moved first so our KE matches (2.18).
pub(crate) fn ike_offer_preferring(props: &[IkeProposal], group: DhGroup) -> Vec<Proposal> {
    let mut props = props.to_vec();
    for p in &mut props {
        if let Some(pos) = p.dh.iter().position(|g| *g == group) {
            p.dh.swap(0, pos);
        }
    }
    ike_offer(&props)
}

/// Wire ESP proposals with our inbound SPI. `pfs` keeps the DH transforms.
pub(crate) fn esp_offer(props: &[EspProposal], spi: Spi, pfs: bool) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut t: Vec<Transform> = p.encr.iter().map(|e| encr_t(*e)).collect();
            t.extend(p.integ.iter().map(|x| integ_t(*x)));
            if pfs {
                t.extend(p.dh.iter().map(|x| dh_t(*x)));
            }
            t.push(Transform {
                kind: Transform::ESN,
                id: u16::from(p.esn),
                key_length: None,
            });
            Proposal {
                number: (i + 1) as u8,
                protocol: ProtocolId::Esp,
                spi: spi.0.to_be_bytes().to_vec(),
                transforms: t,
            }
        })
        .collect()
}

fn pick<T: Copy>(
    offered: &[Transform],
    kind: u8,
    ours: &[T],
    map: impl Fn(T) -> Transform,
) -> Option<(T, Transform)> {
    offered
        .iter()
        .filter(|t| t.kind == kind)
        .find_map(|t| ours.iter().find(|o| map(**o) == *t).map(|o| (*o, *t)))
}

/// Responder: first acceptable offered IKE proposal (2.7). Returns the suite and the one
/// proposal to echo back (its number kept, one transform per type).
pub(crate) fn select_ike(
    offered: &[Proposal],
    ours: &[IkeProposal],
) -> Result<(IkeSuite, Proposal), Error> {
    for p in offered.iter().filter(|p| p.protocol == ProtocolId::Ike) {
        for o in ours {
            let Some((encr, te)) = pick(&p.transforms, Transform::ENCR, &o.encr, encr_t) else {
                continue;
            };
            let Some((prf, tp)) = pick(&p.transforms, Transform::PRF, &o.prf, prf_t) else {
                continue;
            };
            let Some((dh, td)) = pick(&p.transforms, Transform::DH, &o.dh, dh_t) else {
                continue;
            };
            let integ = if is_aead(encr) {
                if p.transforms
                    .iter()
                    .any(|t| t.kind == Transform::INTEG && t.id != 0)
                {
                    continue;
                }
                None
            } else {
                match pick(&p.transforms, Transform::INTEG, &o.integ, integ_t) {
                    Some(x) => Some(x),
                    None => continue,
                }
            };
            let mut transforms = vec![te, tp];
            if let Some((_, ti)) = integ {
                transforms.push(ti);
            }
            transforms.push(td);
            let chosen = Proposal {
                number: p.number,
                protocol: ProtocolId::Ike,
                spi: p.spi.clone(),
                transforms,
            };
            return Ok((
                IkeSuite {
                    encr,
                    prf,
                    integ: integ.map(|x| x.0),
                    dh,
                },
                chosen,
            ));
        }
    }
    Err(Error::NoProposalChosen)
}

/// Initiator: the responder's single proposal must be one we offered (2.7).
pub(crate) fn check_ike_reply(reply: &[Proposal], ours: &[IkeProposal]) -> Result<IkeSuite, Error> {
    let [p] = reply else {
        return Err(Error::NoProposalChosen);
    };
    let (suite, chosen) = select_ike(std::slice::from_ref(p), ours)?;
    if chosen.transforms.len() != p.transforms.len() {
        return Err(Error::NoProposalChosen);
    }
    Ok(suite)
}

/// The group to retry with after INVALID_KE_PAYLOAD, if we offered it (2.7).
pub(crate) fn offered_group(ours: &[IkeProposal], want: u16) -> Option<DhGroup> {
    ours.iter()
        .flat_map(|p| p.dh.iter())
        .find(|g| group_number(**g) == want)
        .copied()
}

/// Responder: first acceptable ESP proposal. `allow_dh`: DH transforms are only
/// meaningful in CREATE_CHILD_SA (1.3). Returns the suite, the proposal to echo (SPI to
/// be replaced by ours) and the peer's SPI.
pub(crate) fn select_esp(
    offered: &[Proposal],
    ours: &[EspProposal],
    allow_dh: bool,
) -> Result<(EspSuite, Proposal, Spi), Error> {
    for p in offered.iter().filter(|p| p.protocol == ProtocolId::Esp) {
        let Some(spi) = p
            .spi
            .get(..4)
            .filter(|_| p.spi.len() == 4)
            .map(|b| Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        else {
            continue;
        };
        for o in ours {
            let Some((encr, te)) = pick(&p.transforms, Transform::ENCR, &o.encr, encr_t) else {
                continue;
            };
            let integ = if is_aead(encr) {
                if p.transforms
                    .iter()
                    .any(|t| t.kind == Transform::INTEG && t.id != 0)
                {
                    continue;
                }
                None
            } else {
                match pick(&p.transforms, Transform::INTEG, &o.integ, integ_t) {
                    Some(x) => Some(x),
                    None => continue,
                }
            };
            let offered_dh: Vec<&Transform> = p
                .transforms
                .iter()
                .filter(|t| t.kind == Transform::DH)
                .collect();
            let dh = if offered_dh.is_empty() || !allow_dh {
                None
            } else if let Some(x) = pick(&p.transforms, Transform::DH, &o.dh, dh_t) {
                Some(x)
            } else if offered_dh.iter().any(|t| t.id == 0) {
                None
            } else {
                continue;
            };
            let esns: Vec<u16> = p
                .transforms
                .iter()
                .filter(|t| t.kind == Transform::ESN)
                .map(|t| t.id)
                .collect();
            let esn = if esns.is_empty() || esns.contains(&0) && !(o.esn && esns.contains(&1)) {
                if !esns.is_empty() && !esns.contains(&0) {
                    continue;
                }
                false
            } else if esns.contains(&1) && o.esn {
                true
            } else {
                continue;
            };
            let mut transforms = vec![te];
            if let Some((_, ti)) = integ {
                transforms.push(ti);
            }
            if let Some((_, td)) = dh {
                transforms.push(td);
            }
            if !esns.is_empty() {
                transforms.push(Transform {
                    kind: Transform::ESN,
                    id: u16::from(esn),
                    key_length: None,
                });
            }
            let chosen = Proposal {
                number: p.number,
                protocol: ProtocolId::Esp,
                spi: p.spi.clone(),
                transforms,
            };
            return Ok((
                EspSuite {
                    encr,
                    integ: integ.map(|x| x.0),
                    dh: dh.map(|x| x.0),
                    esn,
                },
                chosen,
                spi,
            ));
        }
    }
    Err(Error::NoProposalChosen)
}

/// Initiator: check the responder's ESP proposal; returns the suite and its SPI.
pub(crate) fn check_esp_reply(
    reply: &[Proposal],
    ours: &[EspProposal],
) -> Result<(EspSuite, Spi), Error> {
    let [p] = reply else {
        return Err(Error::NoProposalChosen);
    };
    let (s, _, spi) = select_esp(std::slice::from_ref(p), ours, true)?;
    Ok((s, spi))
}

fn ip_u128(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(v) => (false, u128::from(u32::from(v))),
        IpAddr::V6(v) => (true, u128::from(v)),
    }
}

fn from_u128(v6: bool, x: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(x.into())
    } else {
        IpAddr::V4((x as u32).into())
    }
}

/// Intersection of two selectors (2.9), if any.
fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let (a6, a0) = ip_u128(a.start);
    let (_, a1) = ip_u128(a.end);
    let (b6, b0) = ip_u128(b.start);
    let (_, b1) = ip_u128(b.end);
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
    let (ps, pe) = (a.start_port.max(b.start_port), a.end_port.min(b.end_port));
    if ps > pe {
        return None;
    }
    Some(TrafficSelector {
        start: from_u128(a6, s),
        end: from_u128(a6, e),
        protocol,
        start_port: ps,
        end_port: pe,
    })
}

/// Responder narrowing (2.9): TSi to the peer's virtual IPs (when it got some), TSr to
/// our configured local selectors. Nothing left is TS_UNACCEPTABLE.
pub(crate) fn narrow(
    tsi: &[TrafficSelector],
    tsr: &[TrafficSelector],
    local_ts: &[TrafficSelector],
    vips: &[IpAddr],
) -> Result<(Vec<TrafficSelector>, Vec<TrafficSelector>), Error> {
    let out_i: Vec<TrafficSelector> = if vips.is_empty() {
        tsi.to_vec()
    } else {
        vips.iter()
            .flat_map(|v| {
                let host = TrafficSelector {
                    start: *v,
                    end: *v,
                    protocol: 0,
                    start_port: 0,
                    end_port: 65535,
                };
                tsi.iter().filter_map(move |t| intersect(t, &host))
            })
            .collect()
    };
    let out_r: Vec<TrafficSelector> = if local_ts.is_empty() {
        tsr.to_vec()
    } else {
        tsr.iter()
            .flat_map(|t| local_ts.iter().filter_map(move |l| intersect(t, l)))
            .collect()
    };
    if out_i.is_empty() || out_r.is_empty() {
        return Err(Error::TsUnacceptable);
    }
    Ok((out_i, out_r))
}
