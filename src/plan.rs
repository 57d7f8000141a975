//! `headend plan`: cluster sizing (seed 003 ch. 3, "DNS Load Balancing Setup", step 1).
//!
//! ```text
//! ACM_peers = INT(ACM_thru_max / peer_thru_avg)    peers one member carries
//! ACM_min   = num_peers / ACM_peers  (rounded up)  members the load needs
//! ACM_total = ACM_min + ACM_protect                members to tolerate K failures
//! ```
//!
//! The seed writes `ACM_min = num_peers / ACM_peers` without rounding; a fraction of a
//! member cannot be deployed, so it is rounded up here.

/// Input of the sizing formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanInput {
    /// `num_peers`: VPN peers (routers) in total.
    pub peers: u64,
    /// `peer_thru_avg`: average throughput one peer needs, Mbit/s.
    pub peer_mbps: f64,
    /// `ACM_thru_max`: throughput one member sustains, Mbit/s.
    pub member_mbps: f64,
    /// `ACM_protect`: members that may be unavailable at the same time.
    pub protect: u64,
}

/// Result of the sizing formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// `ACM_peers`.
    pub peers_per_member: u64,
    /// `ACM_min`.
    pub min_members: u64,
    /// `ACM_total`.
    pub total_members: u64,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("--peer-mbps must be a positive number of Mbit/s")]
    PeerThroughput,
    #[error("--member-mbps must be a positive number of Mbit/s")]
    MemberThroughput,
    #[error("one member ({member} Mbit/s) cannot carry even one peer ({peer} Mbit/s)")]
    PeerTooLarge { member: f64, peer: f64 },
    #[error("{total} members needed: a cluster has at most {max} (seed 003: up to ten)")]
    TooManyMembers { total: u64, max: u64 },
}

/// Most members of one cluster.
pub const MAX_MEMBERS: u64 = 10;

impl PlanInput {
    /// Applies the formula. A plan beyond [`MAX_MEMBERS`] is an error naming the count.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        if !(self.peer_mbps.is_finite() && self.peer_mbps > 0.0) {
            return Err(PlanError::PeerThroughput);
        }
        if !(self.member_mbps.is_finite() && self.member_mbps > 0.0) {
            return Err(PlanError::MemberThroughput);
        }
        let per = (self.member_mbps / self.peer_mbps).floor();
        if per < 1.0 {
            return Err(PlanError::PeerTooLarge {
                member: self.member_mbps,
                peer: self.peer_mbps,
            });
        }
        // Saturating: f64 -> u64 casts clamp.
        let peers_per_member = per as u64;
        let min_members = self.peers.div_ceil(peers_per_member).max(1);
        let total_members = min_members.saturating_add(self.protect);
        if total_members > MAX_MEMBERS {
            return Err(PlanError::TooManyMembers {
                total: total_members,
                max: MAX_MEMBERS,
            });
        }
        Ok(Plan {
            peers_per_member,
            min_members,
            total_members,
        })
    }
}

impl Plan {
    /// The operator's report.
    pub fn report(&self, i: &PlanInput) -> String {
        let share = |n: u64| i.peers.div_ceil(n.max(1));
        format!(
            "peers per member (ACM_peers = INT({} / {})): {}\n\
             minimum members  (ACM_min = ceil({} / {})): {}\n\
             members in total (ACM_total = {} + protect {}): {}\n\
             normal operation: about {} peers per member; after {} failure(s): about {} per member",
            i.member_mbps,
            i.peer_mbps,
            self.peers_per_member,
            i.peers,
            self.peers_per_member,
            self.min_members,
            self.min_members,
            i.protect,
            self.total_members,
            share(self.total_members),
            i.protect,
            share(self.total_members - i.protect),
        )
    }
}

/// `--measured`: this host's ESP encapsulation rate (AES-256-GCM, 1400-byte inner
/// packets, one core, the data plane's own transform) for `for_how_long`, in Mbit/s of
/// inner traffic. An upper bound for one member: one core, no I/O.
pub fn measure_member_mbps(for_how_long: std::time::Duration) -> f64 {
    use ike::esp::{Lifetimes, NextHeader, OutboundSa, MAX_HEADROOM, MAX_TAILROOM};
    const INNER: usize = 1400;
    let keys = ike::EspKeys {
        spi: ike::Spi(0x0100_0001),
        encr: ike::EncrAlg::AesGcm16(256),
        // A fixed key: only the speed is measured, nothing is sent.
        encr_key: (0u8..36).collect::<Vec<u8>>().into(),
        integ: None,
        integ_key: Vec::new().into(),
        esn: true,
    };
    let Ok(out) = OutboundSa::new(&keys, Lifetimes::default()) else {
        return 0.0;
    };
    let mut buf = vec![0x45u8; MAX_HEADROOM + INNER + MAX_TAILROOM];
    let start = std::time::Instant::now();
    let mut packets = 0u64;
    while start.elapsed() < for_how_long {
        for _ in 0..256 {
            if out
                .encapsulate(&mut buf, MAX_HEADROOM, INNER, NextHeader::Ipv4)
                .is_err()
            {
                return 0.0;
            }
            packets += 1;
        }
    }
    (packets * INNER as u64 * 8) as f64 / start.elapsed().as_secs_f64() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(peers: u64, peer: f64, member: f64, protect: u64) -> PlanInput {
        PlanInput {
            peers,
            peer_mbps: peer,
            member_mbps: member,
            protect,
        }
    }

    #[test]
    fn seed_table_3_1_rate_gives_peers_per_member() {
        // Seed 003 Table 3-1: AES256-GCM16 (FIPS) 898 Mbit/s; peers needing 2 Mbit/s:
        // INT(898 / 2) = 449 per member.
        let p = input(800, 2.0, 898.0, 1).plan().unwrap();
        assert_eq!(p.peers_per_member, 449);
        // 800 / 449 = 1.78 -> 2 members carry the load, +1 protects: the seed's Figure 3-1
        // example (two required, a third against one failure).
        assert_eq!(p.min_members, 2);
        assert_eq!(p.total_members, 3);
    }

    #[test]
    fn int_truncates_and_min_rounds_up() {
        // 3DES-SHA512 538 Mbit/s, 5 Mbit/s peers: INT(107.6) = 107; 1000 peers -> 10 (9.35).
        let p = input(1000, 5.0, 538.0, 0).plan().unwrap();
        assert_eq!(p.peers_per_member, 107);
        assert_eq!(p.min_members, 10);
        assert_eq!(p.total_members, 10);
        // Exactly divisible: no extra member.
        let p = input(900, 1.0, 450.0, 2).plan().unwrap();
        assert_eq!((p.min_members, p.total_members), (2, 4));
    }

    #[test]
    fn refuses_plans_that_cannot_work() {
        assert_eq!(
            input(1000, 5.0, 538.0, 1).plan(),
            Err(PlanError::TooManyMembers { total: 11, max: 10 })
        );
        assert_eq!(
            input(10, 1000.0, 898.0, 1).plan(),
            Err(PlanError::PeerTooLarge {
                member: 898.0,
                peer: 1000.0
            })
        );
        assert_eq!(
            input(10, 0.0, 898.0, 1).plan(),
            Err(PlanError::PeerThroughput)
        );
        assert_eq!(
            input(10, 1.0, f64::NAN, 1).plan(),
            Err(PlanError::MemberThroughput)
        );
    }

    #[test]
    fn measured_rate_is_a_real_positive_rate() {
        let m = measure_member_mbps(std::time::Duration::from_millis(200));
        // Debug builds on a shared machine are slow, but AES-GCM does more than 1 Mbit/s.
        assert!(m > 1.0 && m.is_finite(), "{m}");
    }

    #[test]
    fn report_names_the_formula_and_failure_share() {
        let i = input(800, 2.0, 898.0, 1);
        let r = i.plan().unwrap().report(&i);
        assert!(r.contains("ACM_peers = INT(898 / 2)): 449"), "{r}");
        assert!(r.contains("about 267 peers per member"), "{r}");
        assert!(
            r.contains("after 1 failure(s): about 400 per member"),
            "{r}"
        );
    }
}
