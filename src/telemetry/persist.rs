//! Saving the counters of the push inlets (ingest API, Nango webhooks, proxy) across restarts.
//! They have no store to replay, so without this a restart starts them from 0. The counters of
//! every push-inlet source are written to one JSON file (atomically: a temporary file, fsync,
//! rename) every `interval` when they changed, and last at a clean shutdown; at start-up they
//! are added back before anything is counted. After `kill -9` at most the last `interval` of
//! counts is missing; nothing is ever counted twice. Event tables keep theirs with their cursor.

use super::live::{Counts, Live};
use crate::config::Persistence;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Write `bytes` to `path` so that a reader (or a restart after a crash) sees the old content
/// or the new, never a mix: a temporary file beside it, fsync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The file: per source, the counters of [`super::live::Events::snapshot`].
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Saved {
    sources: BTreeMap<String, Counts>,
}

/// Why the persistence file cannot be used at start-up (starting from 0 over it would lose what
/// it holds).
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read the persistence file {}: {cause}", path.display())]
    Read {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("the persistence file {} is not a counter file of this exporter; move it away to start the counters from 0", .0.display())]
    Foreign(std::path::PathBuf),
}

/// Saves the counters of the push-inlet sources.
pub struct CounterFile {
    cfg: Persistence,
    sources: Vec<String>,
    live: Arc<Live>,
    /// What was last written (nothing is written while it is unchanged).
    last: Option<String>,
    /// Whether the last write failed (logged once per failure streak).
    failing: bool,
}

impl CounterFile {
    /// Read the file and add its counters back to `sources` (a missing file is a first start).
    /// A file that cannot be read or is not ours is an error naming it: starting from 0 over
    /// it would lose what it holds.
    pub fn restore(
        cfg: &Persistence,
        sources: Vec<String>,
        live: Arc<Live>,
    ) -> Result<CounterFile, PersistError> {
        let path = cfg.file.display();
        let saved = match std::fs::read_to_string(&cfg.file) {
            Ok(text) => serde_json::from_str::<Saved>(&text)
                .map_err(|_| PersistError::Foreign(cfg.file.clone()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(cause) => {
                return Err(PersistError::Read {
                    path: cfg.file.clone(),
                    cause,
                })
            }
        };
        for source in &sources {
            if let Some(counts) = saved.sources.get(source) {
                // Once per process: after a reload the counters hold these counts already.
                if live.restore_once(source) {
                    live.events.restore(source, counts);
                }
            }
        }
        let restored: u64 = sources
            .iter()
            .filter_map(|s| saved.sources.get(s))
            .flat_map(|c| c.values())
            .fold(0u64, |a, b| a.saturating_add(*b));
        tracing::info!(file = %path, events = restored, "Counters of the push inlets restored.");
        for (gone, counts) in saved.sources.iter().filter(|(s, _)| !sources.contains(s)) {
            let events = counts.values().fold(0u64, |a, b| a.saturating_add(*b));
            tracing::warn!(file = %path, source = %gone, events, "Counters saved under a source no inlet has now are not restored (renamed? name the inlet's source as before to keep them); they are dropped at the next save.");
        }
        Ok(CounterFile {
            cfg: cfg.clone(),
            sources,
            live,
            last: None,
            failing: false,
        })
    }

    /// Write the counters if they changed since the last write.
    pub fn save(&mut self) -> std::io::Result<()> {
        let saved = Saved {
            sources: self
                .sources
                .iter()
                .map(|s| (s.clone(), self.live.events.snapshot(s)))
                .collect(),
        };
        let text = serde_json::to_string(&saved).expect("serialisable");
        if self.last.as_ref() == Some(&text) {
            return Ok(());
        }
        write_atomically(&self.cfg.file, text.as_bytes())?;
        self.last = Some(text);
        Ok(())
    }

    fn save_and_report(&mut self) {
        match self.save() {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(file = %self.cfg.file.display(), "The persistence file is written again.");
            }
            Ok(()) => {}
            Err(e) => {
                self.live.state_write_errors.inc();
                if !self.failing {
                    self.failing = true;
                    tracing::error!(file = %self.cfg.file.display(), error = %e, "Cannot write the persistence file; the counters keep counting in memory and are saved when it can be written.");
                }
            }
        }
    }

    /// Save every `interval` until `shutdown`, then once more.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            self = tokio::task::spawn_blocking(move || {
                self.save_and_report();
                self
            })
            .await
            .expect("saving does not panic");
        }
        self.save_and_report();
    }
}
