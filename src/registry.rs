//! The device registry shared by the gRPC server threads (readers) and the scanner (the only writer).
//!
//! Readers take the lock only long enough to clone an `Arc` of the current snapshot, so an Allocate never
//! waits on a scan: scans run outside the lock and publish a whole new snapshot at once.

use crate::api;
use crate::device::{Device, Health};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

pub type SharedRegistry = Arc<RwLock<Registry>>;

/// An immutable view of the devices, sorted by ID, with the ListAndWatch message built once for all streams.
#[derive(Debug, Default)]
pub struct Snapshot {
    devices: Vec<Device>,
    index: HashMap<String, usize>,
    list: Arc<api::ListAndWatchResponse>,
}

impl Snapshot {
    fn new(mut devices: Vec<Device>) -> Snapshot {
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        let index = devices.iter().enumerate().map(|(i, d)| (d.id.clone(), i)).collect();
        let mut list = api::ListAndWatchResponse::new();
        list.devices = devices.iter().map(to_wire).collect();
        Snapshot { devices, index, list: Arc::new(list) }
    }

    pub fn get(&self, id: &str) -> Option<&Device> {
        self.index.get(id).map(|&i| &self.devices[i])
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn list(&self) -> Arc<api::ListAndWatchResponse> {
        Arc::clone(&self.list)
    }
}

fn to_wire(d: &Device) -> api::Device {
    let mut w = api::Device::new();
    w.ID = d.id.clone();
    w.health = if d.health.is_healthy() { api::HEALTHY } else { api::UNHEALTHY }.to_string();
    if let Some(n) = d.numa_node {
        let mut node = api::NUMANode::new();
        node.ID = n;
        w.topology.mut_or_insert_default().nodes.push(node);
    }
    w
}

/// What an update changed, for the logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<Device>,
    pub removed: Vec<String>,
    /// Devices whose advertised health changed (Healthy to Unhealthy and back), with the new health.
    pub health: Vec<Device>,
    /// Devices still Unhealthy, for another reason now (the kubelet sees no change; the log says it).
    pub reasons: Vec<Device>,
    /// Devices whose device nodes changed (an AWS slot's driver bound, unbound or bound again), with the
    /// new nodes: what Allocate hands over changes, the list the kubelet sees does not.
    pub nodes: Vec<Device>,
    /// Whether the list the kubelet sees changed (and so is sent to every ListAndWatch stream).
    pub visible: bool,
}

impl Changes {
    /// Nothing to log or send: a NUMA node alone changes the list the kubelet sees (`visible`), so that
    /// counts too.
    pub fn is_empty(&self) -> bool {
        !self.visible
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.health.is_empty()
            && self.reasons.is_empty()
            && self.nodes.is_empty()
    }
}

#[derive(Default)]
pub struct Registry {
    snapshot: Arc<Snapshot>,
    subscribers: Vec<Sender<Arc<api::ListAndWatchResponse>>>,
}

impl Registry {
    pub fn shared() -> SharedRegistry {
        Arc::new(RwLock::new(Registry::default()))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot)
    }

    /// Opens a ListAndWatch feed: the current list, and a channel that receives every later list.
    pub fn subscribe(&mut self) -> (Arc<api::ListAndWatchResponse>, Receiver<Arc<api::ListAndWatchResponse>>) {
        let (tx, rx) = unbounded();
        self.subscribers.push(tx);
        (self.snapshot.list(), rx)
    }

    /// Ends every feed: their streams close.
    pub fn close_feeds(&mut self) {
        self.subscribers.clear();
    }

    /// Publishes a new device list (see `prepare`). Feeds receive the new list only if what the kubelet sees
    /// changed.
    pub fn update(&mut self, devices: Vec<Device>) -> Changes {
        let (next, changes) = prepare(&self.snapshot, devices);
        self.install(next);
        changes
    }

    fn install(&mut self, next: Next) {
        self.snapshot = Arc::new(next.snapshot);
        if next.visible {
            let list = self.snapshot.list();
            self.subscribers.retain(|s| s.send(Arc::clone(&list)).is_ok());
        }
    }
}

/// A snapshot ready to publish, and whether the kubelet would see a difference.
pub struct Next {
    snapshot: Snapshot,
    visible: bool,
}

/// Builds the snapshot that follows `old` from a scan's devices, without any lock. A device whose health is
/// `Unknown` keeps its last advertised health (Unhealthy if it is new).
pub fn prepare(old: &Snapshot, devices: Vec<Device>) -> (Next, Changes) {
    let devices: Vec<Device> = devices
        .into_iter()
        .map(|mut d| {
            if let Health::Unknown(why) = &d.health {
                d.health = match old.get(&d.id) {
                    Some(prev) => prev.health.clone(),
                    None => Health::Unhealthy(format!("state unknown: {why}")),
                };
            }
            d
        })
        .collect();
    let new = Snapshot::new(devices);
    let mut changes = Changes::default();
    for d in new.devices() {
        match old.get(&d.id) {
            None => changes.added.push(d.clone()),
            Some(prev) => {
                if prev.health.is_healthy() != d.health.is_healthy() {
                    changes.health.push(d.clone());
                } else if prev.health != d.health {
                    changes.reasons.push(d.clone());
                }
                if prev.nodes != d.nodes {
                    changes.nodes.push(d.clone());
                }
            }
        }
    }
    changes.removed = old.devices().iter().filter(|d| new.get(&d.id).is_none()).map(|d| d.id.clone()).collect();
    let visible = new.list != old.list;
    changes.visible = visible;
    (Next { snapshot: new, visible }, changes)
}

/// Publishes a scan's devices with the write lock held only to swap the snapshot and notify the feeds: the
/// snapshot is built before, so an Allocate never waits for it. Only the scanner writes, so the snapshot
/// read first is still the current one when the new one is installed. `before` sees the changes before
/// any stream does (the scanner logs them there, so that a log line never trails what the kubelet saw).
pub fn publish(registry: &SharedRegistry, devices: Vec<Device>, before: impl FnOnce(&Changes)) {
    let old = read(registry).snapshot();
    let (next, changes) = prepare(&old, devices);
    before(&changes);
    write(registry).install(next);
}

/// Reads through a poisoned lock: the registry holds plain data that no panic can leave half-written,
/// because every write replaces whole values.
pub fn read(registry: &SharedRegistry) -> std::sync::RwLockReadGuard<'_, Registry> {
    registry.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write(registry: &SharedRegistry) -> std::sync::RwLockWriteGuard<'_, Registry> {
    registry.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, health: Health, numa: Option<i64>) -> Device {
        Device { id: id.into(), health, numa_node: numa, nodes: Vec::new(), pci_address: None, afu_id: None }
    }

    #[test]
    fn updates_reach_feeds_only_when_the_wire_list_changes() {
        let mut r = Registry::default();
        let (first, rx) = r.subscribe();
        assert!(first.devices.is_empty());
        let c = r.update(vec![dev("b", Health::Healthy, Some(1)), dev("a", Health::Healthy, None)]);
        assert_eq!(c.added.len(), 2);
        let list = rx.try_recv().unwrap();
        let ids: Vec<_> = list.devices.iter().map(|d| d.ID.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(list.devices[1].topology.nodes[0].ID, 1);
        // Same wire content: nothing sent.
        assert!(r.update(vec![dev("b", Health::Healthy, Some(1)), dev("a", Health::Healthy, None)]).is_empty());
        assert!(rx.try_recv().is_err());
        let c = r.update(vec![dev("a", Health::Unhealthy("x".into()), None)]);
        assert_eq!(c.removed, ["b"]);
        assert_eq!(c.health.len(), 1);
        assert_eq!(rx.try_recv().unwrap().devices[0].health, "Unhealthy");
        // Another reason: a change to log, nothing to send.
        let c = r.update(vec![dev("a", Health::Unhealthy("y".into()), None)]);
        assert_eq!((c.health.len(), c.reasons.len(), c.visible), (0, 1, false));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn unknown_health_keeps_the_last_known() {
        let mut r = Registry::default();
        r.update(vec![dev("a", Health::Healthy, None), dev("b", Health::Unhealthy("e".into()), None)]);
        r.update(vec![
            dev("a", Health::Unknown("EBUSY".into()), None),
            dev("b", Health::Unknown("EBUSY".into()), None),
            dev("c", Health::Unknown("EBUSY".into()), None),
        ]);
        let s = r.snapshot();
        assert!(s.get("a").unwrap().health.is_healthy());
        assert!(!s.get("b").unwrap().health.is_healthy());
        assert!(!s.get("c").unwrap().health.is_healthy());
    }
}
