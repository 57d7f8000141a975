//! Body of the cluster fuzz target (`cluster/fuzz/`), shared with the seed test below so
//! CI runs exactly what the fuzzer runs. Not an API (hidden from the documentation).
//!
//! [`frames`]: a byte stream as one TCP connection delivers it to [`crate::net`]'s frame
//! reader (4-byte length, JSON). First octet bit 0 clear: a join connection,
//! unauthenticated ([`JoinMsg`]; a `Hello` goes through SPAKE2 with our secret as the
//! member does, a `Challenge` as the joiner does, [`join::finish`], then [`join::verify`]).
//! Set: a replication link, a `LinkHello` then [`Message`]s into a [`Node`] holding
//! records of its own (bit 1: messages come from the configured peer rather than the
//! member the hello names). Invariants: nothing panics; the node stays within its
//! bounds (members, gateway ID length, addresses per record).
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::join::{self, JoinMsg};
use crate::net::{read_frame, read_frame_max, LinkHello, MAX_JOIN_FRAME};
use crate::node::{
    Message, Node, NodeConfig, Snapshot, MAX_ADDRESSES, MAX_GATEWAY_ID_LEN, MAX_MEMBERS,
};

/// Runs a future that cannot wait (its reader is a byte slice) to completion.
fn ready<F: Future>(f: F) -> Option<F::Output> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Runs one input; returns how many frames decoded (the seed test checks the seeds do).
pub fn frames(data: &[u8]) -> usize {
    let Some((&kind, mut stream)) = data.split_first() else {
        return 0;
    };
    let mut decoded = 0;
    if kind & 1 == 0 {
        let exporter = [7u8; 32];
        while let Some(Ok(msg)) = ready(read_frame_max::<_, JoinMsg>(&mut stream, MAX_JOIN_FRAME)) {
            decoded += 1;
            // The member's side of a Hello, the joiner's side of a Challenge (an impostor
            // member may send it): SPAKE2 on their share, then their key confirmation.
            let (state, joiner, pake, confirm) = match msg {
                JoinMsg::Hello { pake } => {
                    let (state, _ours) = join::member_start("fuzz-secret", &exporter);
                    (state, false, pake, Vec::new())
                }
                JoinMsg::Challenge { pake, confirm } => {
                    let (state, _ours) = join::joiner_start("fuzz-secret", &exporter);
                    (state, true, pake, confirm)
                }
                _ => continue,
            };
            if let Ok(key) = join::finish(state, &pake) {
                let _ = join::verify(&key, !joiner, &exporter, &confirm);
                // Our own confirmation reflected back never passes as theirs.
                let ours = join::confirm(&key, joiner, &exporter);
                assert!(!join::verify(&key, !joiner, &exporter, &ours));
            }
        }
        return decoded;
    }
    let Some(Ok(hello)) = ready(read_frame::<_, LinkHello>(&mut stream)) else {
        return decoded;
    };
    decoded += 1;
    let peer = "10.0.0.2".to_string();
    let mut node = Node::new(
        "10.0.0.1".into(),
        1,
        Snapshot::default(),
        std::slice::from_ref(&peer),
        NodeConfig::default(),
        0,
    );
    for (i, gw) in ["gw-a", "gw-b"].into_iter().enumerate() {
        let addr = std::net::IpAddr::from([100, 64, 0, i as u8 + 1]);
        assert!(node.publish(gw, vec![addr], true, 1).is_ok());
    }
    let from = if kind & 2 != 0 { peer } else { hello.member };
    let mut now = 0;
    while let Some(Ok(msg)) = ready(read_frame::<_, Message>(&mut stream)) {
        decoded += 1;
        now += 300;
        let _ = node.handle(&from, msg, now, now);
        node.tick(now, now);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
        node.take_store_ops();
        assert!(node.member_ids().len() <= MAX_MEMBERS);
        for (name, r) in node.view() {
            assert!(!name.is_empty() && name.len() <= MAX_GATEWAY_ID_LEN);
            assert!(r.addresses.len() <= MAX_ADDRESSES);
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::node::{DigestEntry, Entry, PartDelta, Record};
    use rand::{Rng, SeedableRng};

    fn frame(json: &[u8]) -> Vec<u8> {
        let mut f = (json.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(json);
        f
    }

    /// The frames of a replication link from member 10.0.0.2: hello, digest, a delta
    /// with one record, leave.
    fn link_seed() -> Vec<u8> {
        let record = Record {
            gateway_id: "gw-z".into(),
            addresses: vec!["100.64.9.9".parse().unwrap()],
            owner: "10.0.0.2".into(),
            stamp: 5,
            up: true,
        };
        let msgs = [
            Message::Digest(vec![DigestEntry {
                member: "10.0.0.2".into(),
                incarnation: 1,
                heartbeat: 3,
                silent_ms: 0,
                max_version: 1,
                stamp: 5,
                zone_stamp: 5,
            }]),
            Message::Delta(vec![PartDelta {
                member: "10.0.0.2".into(),
                incarnation: 1,
                heartbeat: 3,
                from_version: 0,
                to_version: 1,
                entries: vec![Entry { version: 1, record }],
                info: None,
            }]),
            Message::Leave,
        ];
        let mut s = vec![3u8];
        s.extend(frame(
            br#"{"member":"10.0.0.2","domain":"vpn.example.com"}"#,
        ));
        for m in &msgs {
            s.extend(frame(&serde_json::to_vec(m).unwrap()));
        }
        s
    }

    /// The joiner's view of a join connection: the member's SPAKE2 Challenge.
    fn challenge_seed() -> Vec<u8> {
        let (_, pake) = join::member_start("fuzz-secret", &[7u8; 32]);
        let challenge = JoinMsg::Challenge {
            pake,
            confirm: vec![0; 32],
        };
        let mut s = vec![0u8];
        s.extend(frame(&serde_json::to_vec(&challenge).unwrap()));
        s
    }

    /// A join connection: the joiner's SPAKE2 Hello, then a Confirm.
    fn join_seed() -> Vec<u8> {
        let (_, pake) = join::joiner_start("fuzz-secret", &[7u8; 32]);
        let confirm = JoinMsg::Confirm {
            confirm: vec![0; 32],
            member: "10.0.0.3".into(),
            domain: "vpn.example.com".into(),
        };
        let mut s = vec![0u8];
        s.extend(frame(
            &serde_json::to_vec(&JoinMsg::Hello { pake }).unwrap(),
        ));
        s.extend(frame(&serde_json::to_vec(&confirm).unwrap()));
        s
    }

    /// The seeds in `fuzz/seeds/frames` are what the target expects (every frame
    /// decodes), the link seed is exactly what [`link_seed`] builds, and a smoke run of
    /// deterministic mutations passes. (SPAKE2 shares are random, so the join and
    /// challenge files are one run of [`join_seed`] and [`challenge_seed`].)
    #[test]
    fn frames_fuzz_target_on_seeds_and_mutations() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/frames");
        let mut seeds = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            seeds.insert(name, std::fs::read(&p).unwrap());
        }
        assert_eq!(seeds["link"], link_seed());
        assert_eq!(frames(&seeds["link"]), 4);
        assert_eq!(frames(&seeds["join"]), 2);
        assert_eq!(frames(&join_seed()), 2);
        assert_eq!(frames(&seeds["challenge"]), 1);
        assert_eq!(frames(&challenge_seed()), 1);
        // Mutations of the link only: SPAKE2 without optimisation takes 0.2 s a Hello
        // (`cargo fuzz` covers the join port at full speed).
        // JSON punctuation and digits: the edits that keep a frame half-parsable.
        const JSON: &[u8] = b"{}[]\",:0-e\x00";
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9100);
        for _ in 0..3000 {
            let mut m = seeds["link"].clone();
            for _ in 0..rng.gen_range(1..=4) {
                let pos = rng.gen_range(0..=m.len());
                if rng.gen_bool(0.3) {
                    m.truncate(pos);
                } else if pos < m.len() && rng.gen_bool(0.5) {
                    m[pos] = rng.gen();
                } else {
                    m.insert(pos, JSON[rng.gen_range(0..JSON.len())]);
                }
            }
            frames(&m);
        }
    }
}
