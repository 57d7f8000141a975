//! The engine's view of proposal negotiation (RFC 7296 2.7, 3.3.6) and traffic selector
//! narrowing (2.9): a thin adapter over [`crate::negotiate`], so the state machine has one
//! place that talks to it and works with [`IkeSuite`] (the crypto layer's suite type).
use std::net::IpAddr;

use crate::config::{DhGroup, EspProposal, IkeProposal};
use crate::crypto::IkeSuite;
use crate::error::Error;
use crate::event::{Spi, TrafficSelector};
use crate::message::Proposal;
use crate::negotiate::{self, NegotiatedIke};

/// A negotiated ESP suite.
pub(crate) type EspSuite = negotiate::NegotiatedEsp;

fn suite(n: NegotiatedIke) -> IkeSuite {
    IkeSuite {
        encr: n.encr,
        prf: n.prf,
        integ: n.integ,
        dh: n.dh,
    }
}

/// Wire proposals for IKE_SA_INIT (no SPI).
pub(crate) fn ike_offer(props: &[IkeProposal]) -> Vec<Proposal> {
    negotiate::ike_offer(props, &[])
}

/// IKE proposals for a rekey with our new SPI, `group` first so our KE matches (2.18).
pub(crate) fn ike_offer_preferring(
    props: &[IkeProposal],
    spi: u64,
    group: DhGroup,
) -> Vec<Proposal> {
    negotiate::ike_offer_preferring(props, &spi.to_be_bytes(), group)
}

/// Wire ESP proposals with our inbound SPI; with `pfs`, `group` first.
pub(crate) fn esp_offer(props: &[EspProposal], spi: Spi, pfs: Option<DhGroup>) -> Vec<Proposal> {
    match pfs {
        Some(g) => negotiate::esp_offer_preferring(props, spi, g),
        None => negotiate::esp_offer(props, spi, false),
    }
}

/// Responder: the IKE proposal to use and the one to echo (2.7). `ke_group` is the group
/// of the KE payload that came with the offer (preferred when acceptable).
pub(crate) fn select_ike(
    offered: &[Proposal],
    ours: &[IkeProposal],
    ke_group: Option<u16>,
) -> Result<(IkeSuite, Proposal), Error> {
    negotiate::select_ike(offered, ours, ke_group).map(|(n, p)| (suite(n), p))
}

/// Initiator: the responder's single IKE proposal must be one we offered (2.7).
pub(crate) fn check_ike_reply(reply: &[Proposal], ours: &[IkeProposal]) -> Result<IkeSuite, Error> {
    negotiate::check_ike_reply(reply, ours).map(suite)
}

/// The group to retry with after INVALID_KE_PAYLOAD, if we offered it (2.7).
pub(crate) fn offered_group(ours: &[IkeProposal], want: u16) -> Option<DhGroup> {
    let g = negotiate::dh_group_from_number(want)?;
    ours.iter().any(|p| p.dh.contains(&g)).then_some(g)
}

/// Responder: the ESP proposal to use; returns the suite, the proposal to echo (the
/// caller puts its SPI in) and the peer's SPI. `pfs_allowed` only in CREATE_CHILD_SA.
pub(crate) fn select_esp(
    offered: &[Proposal],
    ours: &[EspProposal],
    pfs_allowed: bool,
    ke_group: Option<u16>,
) -> Result<(EspSuite, Proposal, Spi), Error> {
    negotiate::select_esp(offered, ours, pfs_allowed, ke_group)
}

/// Initiator: check the responder's ESP proposal; returns the suite and its SPI.
pub(crate) fn check_esp_reply(
    reply: &[Proposal],
    ours: &[EspProposal],
    pfs: bool,
) -> Result<(EspSuite, Spi), Error> {
    negotiate::check_esp_reply(reply, ours, pfs)
}

/// Responder narrowing (2.9). An empty `local_ts` puts no limit on our side.
pub(crate) fn narrow(
    tsi: &[TrafficSelector],
    tsr: &[TrafficSelector],
    local_ts: &[TrafficSelector],
    vips: &[IpAddr],
) -> Result<(Vec<TrafficSelector>, Vec<TrafficSelector>), Error> {
    if local_ts.is_empty() {
        let any: Vec<TrafficSelector> = vec![negotiate::ts_any(false), negotiate::ts_any(true)];
        return negotiate::narrow(tsi, tsr, &any, vips);
    }
    negotiate::narrow(tsi, tsr, local_ts, vips)
}

/// Initiator: the responder may only narrow what we asked (2.9).
pub(crate) fn ts_within(returned: &[TrafficSelector], asked: &[TrafficSelector]) -> bool {
    negotiate::ts_within(returned, asked)
}
