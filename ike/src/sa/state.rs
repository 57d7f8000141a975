//! Internal per-SA state of the engine.
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use crate::config::{EspProposal, InitiatorConfig, PrfAlg};
use crate::crypto::{IkeKeys, IkeSuite, KeyExchange, SkCipher};
use crate::event::{ChildSa, Identity, IkeSaId, SocketKind, Spi, TrafficSelector};

use super::{IkeSaState, Reassembly};

/// Keys of an IKE SA after IKE_SA_INIT (RFC 7296 2.14).
pub(crate) struct SaKeys {
    pub prf: PrfAlg,
    pub sk_d: Zeroizing<Vec<u8>>,
    pub sk_pi: Zeroizing<Vec<u8>>,
    pub sk_pr: Zeroizing<Vec<u8>>,
    /// Protects what we send.
    pub out: SkCipher,
    /// Opens what we receive.
    pub inb: SkCipher,
}

impl SaKeys {
    /// One side's view of freshly derived IKE SA keys (RFC 7296 2.14): the AUTH keys, SK_d
    /// and the SK payload ciphers, outbound and inbound for our role in this SA (the
    /// original initiator of a rekeyed SA is whoever sent the CREATE_CHILD_SA, 2.18).
    pub fn from_ike_keys(
        keys: IkeKeys,
        suite: &IkeSuite,
        we_are_initiator: bool,
    ) -> Result<Self, crate::Error> {
        let (out, inb) = keys.sk_ciphers(suite, we_are_initiator)?;
        Ok(Self {
            prf: suite.prf,
            sk_d: keys.sk_d,
            sk_pi: keys.sk_pi,
            sk_pr: keys.sk_pr,
            out,
            inb,
        })
    }
}

/// Lifecycle of one CHILD SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildState {
    Installed,
    /// We sent a rekey request for it.
    Rekeying,
    /// Replaced by a rekey; deleted when the Delete exchange completes (2.8).
    Rekeyed,
    /// We sent a Delete for it.
    Deleting,
}

pub(crate) struct Child {
    pub sa: ChildSa,
    pub state: ChildState,
    /// Key exchange group of the last (re)key of this SA, for PFS on the next rekey.
    pub pfs_group: Option<crate::config::DhGroup>,
    pub established_at: Instant,
    pub rekey_at: Option<Instant>,
    /// Set when the peer rekeyed this SA while our own rekey of it was in flight
    /// (2.8.1): the new inbound SPI and the two nonces of the peer's exchange.
    pub peer_rekey: Option<(Spi, Vec<u8>, Vec<u8>)>,
}

/// A request we want to send, waiting for the window (size 1, RFC 7296 2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LocalReq {
    RekeyChild(Spi),
    RekeyIke,
    DeleteChild(Vec<Spi>),
    DeleteIke,
    Dpd,
    /// Tell the peer its ESP SPI is unknown here (2.21.4).
    InvalidSpi(Spi),
    /// Open another CHILD SA asking for these selectors (ours, the peer's), 1.3.1.
    CreateChild(Vec<TrafficSelector>, Vec<TrafficSelector>),
}

/// What an outstanding request of ours was about.
pub(crate) enum PendingKind {
    IkeSaInit,
    IkeAuth,
    RekeyChild {
        old: Spi,
        our_spi: Spi,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
        /// The peer's simultaneous rekey of `old` we answered (2.8.1: its new inbound
        /// SPI at our side, Ni, Nr), kept here when the peer deleted `old` before our
        /// answer arrived (its exchange won; ours created the redundant SA).
        peer: Option<(Spi, Vec<u8>, Vec<u8>)>,
    },
    RekeyIke {
        new_spi: u64,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
    },
    /// A new CHILD SA (1.3.1) and the selectors we asked for (TSi, TSr).
    CreateChild {
        our_spi: Spi,
        ni: Vec<u8>,
        ke: Option<KeyExchange>,
        asked: (Vec<TrafficSelector>, Vec<TrafficSelector>),
    },
    DeleteChild(Vec<Spi>),
    DeleteIke,
    Dpd,
}

/// Our outstanding request (window size 1): sent datagrams, for retransmission (2.1).
pub(crate) struct Pending {
    pub msg_id: u32,
    pub packets: Vec<Vec<u8>>,
    pub tries: u32,
    pub next_at: Instant,
    pub kind: PendingKind,
}

/// The last response we sent, replayed when its request is retransmitted (2.1).
pub(crate) struct Cached {
    pub msg_id: u32,
    pub request_hash: [u8; 32],
    pub packets: Vec<Vec<u8>>,
}

/// Initiator-side material for the first CHILD SA, created in IKE_AUTH.
pub(crate) struct FirstChild {
    pub our_spi: Spi,
    pub proposals: Vec<EspProposal>,
}

pub(crate) struct IkeSa {
    pub id: IkeSaId,
    pub state: IkeSaState,
    /// We are the original initiator (sets the I flag, RFC 7296 3.1).
    pub initiator: bool,
    pub spi_i: u64,
    pub spi_r: u64,
    pub socket: SocketKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
    pub rng: ChaCha20Rng,
    pub icfg: Option<Arc<InitiatorConfig>>,
    pub suite: Option<IkeSuite>,
    /// Initiator: our key exchange until the IKE_SA_INIT response arrives.
    pub ke: Option<KeyExchange>,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    /// IKE_SA_INIT request and response as sent (RealMessage1/2 of 2.15).
    pub init_req: Vec<u8>,
    pub init_resp: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
    pub keys: Option<SaKeys>,
    pub local_id: Option<Identity>,
    pub remote_id: Option<Identity>,
    /// CN of the peer's certificate subject, for certificate peers (issue 7).
    pub remote_cert_cn: Option<String>,
    pub peer_frag: bool,
    pub next_msg_id: u32,
    pub pending: Option<Pending>,
    pub queue: VecDeque<LocalReq>,
    /// Message ID expected in the peer's next request.
    pub peer_msg_id: u32,
    pub cached: Option<Cached>,
    pub reassembly: Option<Reassembly>,
    pub children: Vec<Child>,
    pub first_child: Option<FirstChild>,
    pub vips: Vec<IpAddr>,
    pub created: Instant,
    pub established_at: Option<Instant>,
    pub last_inbound: Instant,
    pub ike_rekey_at: Option<Instant>,
    /// Hard expiry (half-open SAs, lingering rekeyed SAs).
    pub expire_at: Option<Instant>,
    /// The deadline currently registered in the endpoint's timer heap.
    pub deadline: Option<Instant>,
    /// Counted in the endpoint's half-open total.
    pub half_open: bool,
    /// Key into the responder's IKE_SA_INIT retransmission index.
    pub init_key: Option<(SocketAddr, u64)>,
    /// Why the SA goes away once a pending Delete completes.
    pub delete_reason: Option<crate::event::DeleteReason>,
    /// Set on the old IKE SA when we answered the peer's rekey of it while our own rekey
    /// was in flight (RFC 7296 2.8.1): the SA the peer's exchange created and its nonces.
    pub peer_ike_rekey: Option<(IkeSaId, Vec<u8>, Vec<u8>)>,
    /// Created by one of two colliding IKE SA rekeys and not (yet) chosen as the
    /// survivor (2.8.1): it holds no CHILD SA, is not listed, and goes without events.
    pub hidden: bool,
    /// The IKE SA that replaced this one by a rekey (2.8), for late responses.
    pub successor: Option<IkeSaId>,
}

impl IkeSa {
    /// Our own SPI: the key of the endpoint's SPI map.
    pub fn our_spi(&self) -> u64 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    pub fn child_by_inbound(&mut self, spi: Spi) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.sa.inbound.spi == spi)
    }

    pub fn child_index_by_outbound(&self, spi: Spi) -> Option<usize> {
        self.children.iter().position(|c| c.sa.outbound.spi == spi)
    }
}
