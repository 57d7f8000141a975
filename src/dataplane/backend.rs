//! The seam between the daemon and an ESP data plane: what the daemon needs from one.
//!
//! The daemon holds an `Arc<dyn EspBackend>` (`services::attach_backend`): CHILD SA
//! events (`run::to_dataplane`) become [`EspBackend::install`] / [`EspBackend::rekey`] /
//! [`EspBackend::remove`] on a thread of their own, `show`/`/metrics` read
//! [`EspBackend::usage`] and [`EspBackend::counters`], and the back end's
//! [`RekeyRequest`]s go to the engine's CHILD SA rekey (RFC 7296 2.8). The userspace data
//! plane ([`super::DataplaneHandle`]) implements it, and passes the test
//! `run::tests::the_daemon_drives_the_data_plane_through_the_backend_seam` that any
//! other back end has to pass too.
//!
//! NAT-T socket ownership is NOT part of this trait. The userspace data plane
//! decapsulates ESP-in-UDP itself, so it owns the port-4500 sockets and hands their IKE
//! datagrams to the daemon (`DataplaneHandle::take_ike_datagrams` / `send_natt`,
//! inherent methods). A kernel back end would leave the daemon its own NAT-T socket
//! (`driver::Sockets`, as when no data plane runs) with the `UDP_ENCAP` socket option set
//! to `UDP_ENCAP_ESPINUDP` (RFC 3948): the kernel then takes ESP off that socket and
//! passes up only the datagrams with the non-ESP marker, which is IKE.
//!
//! # How a kernel XFRM back end would implement it (not built: these kernels have no ESP)
//! - `install`: per direction an `XFRM_MSG_NEWSA` (`ip xfrm state add src .. dst .. proto
//!   esp spi .. reqid R mode tunnel aead 'rfc4106(gcm(aes))' KEY 128`, or `enc` + `auth`
//!   for AES-CBC with HMAC-SHA2; `replay-window`, `flag esn`, `limit byte-soft ..
//!   packet-soft ..` from the lifetimes, `encap espinudp 4500 PORT 0.0.0.0` when
//!   `udp_encap`), then `XFRM_MSG_NEWPOLICY` for each selector pair (`ip xfrm policy add
//!   src REMOTE_TS dst LOCAL_TS dir in|fwd`, and `dir out` the other way, `tmpl .. proto esp
//!   reqid R mode tunnel`). Routing is the kernel's; there is no TUN device.
//! - `rekey`: [`Handover::Now`]: `XFRM_MSG_NEWSA` for both new SAs with the same reqid
//!   (the kernel sends on the newest state of a reqid); [`Handover::AtDelete`] and
//!   [`Handover::Never`]: the new inbound SA now, the new outbound SA (`AtDelete`) only at
//!   the `remove` of the old pair.
//! - `remove`: `XFRM_MSG_DELSA` (`ip xfrm state delete .. spi ..`) for both SPIs, the
//!   inbound one after `rekey_linger_ms`; `XFRM_MSG_DELPOLICY` with the last SA of a reqid.
//! - `usage`: `XFRM_MSG_GETSA`'s current lifetime (`ip -s xfrm state`: bytes, packets).
//! - `counters`: totals of the SAs' current lifetimes, drops from `/proc/net/xfrm_stat`
//!   (`XfrmInNoStates`, `XfrmInStateProtoError`, `XfrmInStateSeqError`, ...).
//! - `take_rekey_requests`: the `XFRMNLGRP_EXPIRE` multicast group (`ip xfrm monitor
//!   expire`): a soft `XFRM_MSG_EXPIRE` names an SA, mapped to its CHILD SA's inbound SPI.
use ike::{ChildSa, Spi};
use tokio::sync::mpsc;

use super::{Counters, DataplaneHandle, Handover, RekeyRequest};
use crate::Error;

/// The CHILD SA half of an ESP data plane: SAs and their policies in, usage and rekey
/// requests out (RFC 4301 4.4: the SAD and SPD the IKE daemon keeps in step).
pub trait EspBackend: Send + Sync + 'static {
    /// Installs a CHILD SA pair: its inbound SPI is accepted, traffic within its
    /// selectors goes out on its outbound SA.
    fn install(&self, sa: &ChildSa) -> Result<(), Error>;
    /// A rekeyed CHILD SA (RFC 7296 2.8): `new` is installed beside the old pair, whose
    /// inbound SA keeps accepting; `handover` says when `new` carries traffic.
    fn rekey(&self, old_inbound: Spi, new: &ChildSa, handover: Handover) -> Result<(), Error>;
    /// Deletes a CHILD SA pair (RFC 7296 1.4.1).
    fn remove(&self, inbound: Spi, outbound: Spi) -> Result<(), Error>;
    /// Usage of an installed CHILD SA, by its inbound SPI: (inbound bytes, packets),
    /// (outbound bytes, packets).
    fn usage(&self, child: Spi) -> Option<((u64, u64), (u64, u64))>;
    /// Packets, bytes and drops by reason, for status and metrics.
    fn counters(&self) -> Counters;
    /// CHILD SAs to rekey (soft lifetimes, sequence numbers); once, `None` afterwards.
    fn take_rekey_requests(&mut self) -> Option<mpsc::UnboundedReceiver<RekeyRequest>>;
}

impl EspBackend for DataplaneHandle {
    fn install(&self, sa: &ChildSa) -> Result<(), Error> {
        DataplaneHandle::install(self, sa)
    }
    fn rekey(&self, old_inbound: Spi, new: &ChildSa, handover: Handover) -> Result<(), Error> {
        DataplaneHandle::rekey(self, old_inbound, new, handover)
    }
    fn remove(&self, inbound: Spi, outbound: Spi) -> Result<(), Error> {
        DataplaneHandle::remove(self, inbound, outbound)
    }
    fn usage(&self, child: Spi) -> Option<((u64, u64), (u64, u64))> {
        DataplaneHandle::usage(self, child)
    }
    fn counters(&self) -> Counters {
        DataplaneHandle::counters(self)
    }
    fn take_rekey_requests(&mut self) -> Option<mpsc::UnboundedReceiver<RekeyRequest>> {
        DataplaneHandle::take_rekey_requests(self)
    }
}
