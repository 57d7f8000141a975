//! On-disk state of one member: its own partition, what it learned of the others, and its
//! incarnation counter, in sled. A batch of [`StoreOp`]s is applied atomically and flushed
//! (fsync) before the change it carries is acknowledged.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::node::{Entry, InfoEntry, MemberId, Partition, Snapshot, StoreOp};
use crate::Error;

const INCARNATION_KEY: &[u8] = b"i";

#[derive(Serialize, Deserialize)]
struct Meta {
    incarnation: u64,
    max_version: u64,
}

/// The member's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
}

fn entry_key(member: &str, gateway_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(member.len() + gateway_id.len() + 3);
    k.extend_from_slice(b"e\0");
    k.extend_from_slice(member.as_bytes());
    k.push(0);
    k.extend_from_slice(gateway_id.as_bytes());
    k
}

fn entry_prefix(member: &str) -> Vec<u8> {
    let mut k = b"e\0".to_vec();
    k.extend_from_slice(member.as_bytes());
    k.push(0);
    k
}

fn info_key(member: &str) -> Vec<u8> {
    let mut k = b"n\0".to_vec();
    k.extend_from_slice(member.as_bytes());
    k
}

fn meta_key(member: &str) -> Vec<u8> {
    let mut k = b"m\0".to_vec();
    k.extend_from_slice(member.as_bytes());
    k
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Self { db })
    }

    /// Whether the store has never held a cluster (first start of this member).
    pub fn is_fresh(&self) -> Result<bool, Error> {
        Ok(self.db.get(INCARNATION_KEY)?.is_none())
    }

    /// Bump and persist the incarnation counter: every start is a new incarnation.
    pub fn next_incarnation(&self) -> Result<u64, Error> {
        let prev = match self.db.get(INCARNATION_KEY)? {
            Some(v) => {
                let b: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| Error::Malformed("stored incarnation"))?;
                u64::from_be_bytes(b)
            }
            None => 0,
        };
        let next = prev + 1;
        self.db.insert(INCARNATION_KEY, &next.to_be_bytes())?;
        self.db.flush()?;
        Ok(next)
    }

    /// Every partition stored.
    pub fn load(&self) -> Result<Snapshot, Error> {
        let mut snap = Snapshot::default();
        for kv in self.db.scan_prefix(b"m\0") {
            let (k, v) = kv?;
            let member = String::from_utf8_lossy(&k[2..]).into_owned();
            let meta: Meta = serde_json::from_slice(&v)?;
            let p = snap.partitions.entry(member).or_default();
            p.incarnation = meta.incarnation;
            p.max_version = meta.max_version;
        }
        for kv in self.db.scan_prefix(b"e\0") {
            let (_, v) = kv?;
            let e: Entry = serde_json::from_slice(&v)?;
            let member = e.record.owner.clone();
            snap.partitions
                .entry(member)
                .or_insert_with(Partition::default)
                .entries
                .insert(e.record.gateway_id.clone(), e);
        }
        for kv in self.db.scan_prefix(b"n\0") {
            let (k, v) = kv?;
            let member = String::from_utf8_lossy(&k[2..]).into_owned();
            let e: InfoEntry = serde_json::from_slice(&v)?;
            snap.partitions.entry(member).or_default().info = Some(e);
        }
        Ok(snap)
    }

    /// Apply a batch atomically (not yet durable: call [`Store::flush`]).
    pub fn apply(&self, ops: &[StoreOp]) -> Result<(), Error> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                StoreOp::Put { member, entry } => {
                    batch.insert(
                        entry_key(member, &entry.record.gateway_id),
                        serde_json::to_vec(entry)?,
                    );
                }
                StoreOp::Meta {
                    member,
                    incarnation,
                    max_version,
                } => {
                    batch.insert(meta_key(member), meta_bytes(*incarnation, *max_version)?);
                }
                StoreOp::Replace { member, partition } => {
                    // Earlier puts must be visible to the prefix scan below.
                    self.db.apply_batch(std::mem::take(&mut batch))?;
                    self.remove_entries(&mut batch, member)?;
                    for e in partition.entries.values() {
                        batch.insert(
                            entry_key(member, &e.record.gateway_id),
                            serde_json::to_vec(e)?,
                        );
                    }
                    batch.insert(
                        meta_key(member),
                        meta_bytes(partition.incarnation, partition.max_version)?,
                    );
                    match &partition.info {
                        Some(i) => batch.insert(info_key(member), serde_json::to_vec(i)?),
                        None => batch.remove(info_key(member)),
                    }
                }
                StoreOp::Info { member, entry } => {
                    batch.insert(info_key(member), serde_json::to_vec(entry)?);
                }
                StoreOp::Drop { member } => {
                    self.db.apply_batch(std::mem::take(&mut batch))?;
                    self.remove_entries(&mut batch, member)?;
                    batch.remove(meta_key(member));
                    batch.remove(info_key(member));
                }
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    fn remove_entries(&self, batch: &mut sled::Batch, member: &MemberId) -> Result<(), Error> {
        for kv in self.db.scan_prefix(entry_prefix(member)) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        Ok(())
    }

    /// Make everything applied so far durable.
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush()?;
        Ok(())
    }

    /// Keep a small value (cluster CA, member certificate, domain) under `name`.
    pub fn put_blob(&self, name: &str, value: &[u8]) -> Result<(), Error> {
        let mut k = b"b\0".to_vec();
        k.extend_from_slice(name.as_bytes());
        self.db.insert(k, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Read a value stored with [`Store::put_blob`].
    pub fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut k = b"b\0".to_vec();
        k.extend_from_slice(name.as_bytes());
        Ok(self.db.get(k)?.map(|v| v.to_vec()))
    }
}

fn meta_bytes(incarnation: u64, max_version: u64) -> Result<Vec<u8>, Error> {
    Ok(serde_json::to_vec(&Meta {
        incarnation,
        max_version,
    })?)
}
