//! What the rest of the exporter sees of a source: its identity and its latest snapshot.

use super::reasons::StoreKind;
use super::snapshot::{SourceSnapshot, Windows};
use crate::provider::ProviderProfile;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// A source's identity and its latest snapshot (replaced whole after each successful poll).
#[derive(Debug)]
pub struct SourceHandle {
    pub name: String,
    /// The source's own provider (rows may name others: see the snapshot's `providers`).
    pub provider: &'static str,
    pub kind: StoreKind,
    /// Names of the extra `oauth_connection_info` labels, in config order.
    pub label_names: Vec<String>,
    snapshot: RwLock<Arc<SourceSnapshot>>,
    ready: AtomicBool,
    up: AtomicBool,
}

impl SourceHandle {
    pub fn new(
        name: &str,
        kind: StoreKind,
        provider: &ProviderProfile,
        label_names: Vec<String>,
    ) -> Self {
        SourceHandle {
            name: name.to_string(),
            provider: provider.name(),
            kind,
            label_names,
            snapshot: RwLock::new(Arc::new(SourceSnapshot::empty(
                provider.name(),
                Windows::of(provider),
            ))),
            ready: AtomicBool::new(false),
            up: AtomicBool::new(false),
        }
    }

    /// The latest snapshot (cheap: a reference count).
    pub fn snapshot(&self) -> Arc<SourceSnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace the snapshot after a successful poll: the source is up and ready.
    pub fn publish(&self, s: SourceSnapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
        self.up.store(true, Ordering::Release);
        self.ready.store(true, Ordering::Release);
    }

    /// A poll failed: the last snapshot stays, the source is down.
    pub fn set_down(&self) {
        self.up.store(false, Ordering::Release);
    }

    /// True once a poll has succeeded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// True when the last poll succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// The sources being polled, in config order: replaced whole when a config reload adds, changes
/// or removes one (readers take the list as it is at that moment).
#[derive(Debug, Clone, Default)]
pub struct SourceSet(Arc<RwLock<Arc<Vec<Arc<SourceHandle>>>>>);

impl SourceSet {
    pub fn new(handles: Vec<Arc<SourceHandle>>) -> Self {
        SourceSet(Arc::new(RwLock::new(Arc::new(handles))))
    }

    /// The current list (cheap: a reference count).
    pub fn get(&self) -> Arc<Vec<Arc<SourceHandle>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, handles: Vec<Arc<SourceHandle>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(handles);
    }
}
