//! The running exporter, and reading its config again while it runs (SIGHUP, `POST /-/reload`).
//!
//! A reload builds every part whose piece of the config changed (a source, an inlet, the
//! persistence file) before touching anything: a config that does not validate, a store the
//! driver cannot open, a listener that cannot bind or a web config that does not load refuses
//! the reload (`oauth_exporter_config_last_reload_successful` 0, the problems logged and
//! answered) and the running config stays. Then it swaps: parts that did not change keep
//! running untouched (their snapshot, cursor and counters included), changed parts restart,
//! removed ones stop and their series go. Counters never reset: they live in the telemetry,
//! not in the parts, and saved counters are restored at most once per process.

use super::parts::{self, Core, InletConfig};
use super::{
    listen_address, listener_options, merge, spawn_serve, Exporter, Reload, RunError,
    ServerOptions, SwapRouter,
};
use crate::config::{Config, Persistence, SourceConfig};
use crate::events::Listener;
use crate::http::serve::{AuthHeader, ServeOptions};
use crate::http::server::{Lifecycle, ReloadRequest};
use crate::model::{SourceHandle, SourceSet};
use crate::pipeline::Poll;
use crate::telemetry::persist::CounterFile;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a poll loop or a listener belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    Source(String),
    Inlet((&'static str, String)),
}

/// A running task and its own stop.
struct Task {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Task {
    fn poll(p: Box<dyn Poll>, parent: &CancellationToken) -> Task {
        let stop = parent.child_token();
        let handle = tokio::spawn(p.run(stop.clone()));
        Task { stop, handle }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// An inlet's listener, serving a router a reload can swap.
struct ListenerRun {
    address: String,
    web_config_file: Option<PathBuf>,
    router: SwapRouter,
    task: Task,
}

struct RunningSource {
    cfg: SourceConfig,
    handle: Arc<SourceHandle>,
    task: Task,
}

struct RunningInlet {
    cfg: InletConfig,
    routes: Option<axum::Router>,
    tasks: Vec<Task>,
    listeners: Vec<ListenerRun>,
}

/// The push inlets' counter file, saving in the background.
struct Saver {
    cfg: Persistence,
    sources: Vec<String>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Saver {
    fn start(file: CounterFile, cfg: Persistence, sources: Vec<String>) -> Saver {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(file.run(stop.clone()));
        Saver {
            cfg,
            sources,
            stop,
            handle,
        }
    }

    /// Stop and save once more.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

/// An inlet built by a reload, with its listeners: bound now, or `None` where the running one
/// is kept (its router swapped).
type BuiltInlet = (parts::InletPart, Vec<Option<ListenerRun>>);

struct Running {
    config: Config,
    core: Core,
    sources_set: SourceSet,
    inlet_lines: Arc<RwLock<Vec<String>>>,
    sources: Vec<RunningSource>,
    inlets: Vec<RunningInlet>,
    saver: Option<Saver>,
    endpoints: axum::Router,
    web_router: SwapRouter,
    opts: ServerOptions,
    shutdown: CancellationToken,
}

/// Bind an inlet's listener and serve it (a listener without an address is served by the
/// program embedding the exporter; `None`).
async fn start_listener(
    l: Listener,
    opts: &ServerOptions,
    shutdown: &CancellationToken,
) -> Result<Option<ListenerRun>, RunError> {
    let Some(address) = l.address.as_deref().map(listen_address) else {
        return Ok(None);
    };
    let serve_opts = listener_options(&l, opts)?;
    let socket = TcpListener::bind(&address)
        .await
        .map_err(|cause| RunError::Listen {
            name: l.name,
            address: address.clone(),
            cause,
        })?;
    if let Ok(a) = socket.local_addr() {
        tracing::info!(listener = l.name, address = %a, "Listening.");
    }
    let router = SwapRouter::new(l.router.clone());
    let stop = shutdown.child_token();
    let handle = spawn_serve(l.name, socket, router.service(), serve_opts, stop.clone());
    Ok(Some(ListenerRun {
        address,
        web_config_file: l.web_config_file,
        router,
        task: Task { stop, handle },
    }))
}

pub(super) async fn run(
    e: Exporter,
    web: Vec<TcpListener>,
    opts: ServerOptions,
    shutdown: CancellationToken,
    reload: Option<Reload>,
) -> Result<(), RunError> {
    let (load, mut requests, lifecycle) = match reload {
        Some(r) => (Some(r.load), Some(r.requests), r.lifecycle),
        None => (None, None, None),
    };
    let lifecycle = lifecycle.map(|reload| Lifecycle {
        reload,
        shutdown: shutdown.clone(),
    });
    let endpoints = e.endpoints(&opts, lifecycle);
    let Exporter {
        counter_file,
        pollers,
        listeners,
        sources: sources_set,
        inlet_lines,
        routes,
        config,
        inlet_configs,
        poll_owners,
        listener_owners,
        core,
        ..
    } = e;
    // Every listener of the inlets is bound before anything runs: one that cannot listen
    // stops the start.
    let mut inlets: Vec<RunningInlet> = inlet_configs
        .into_iter()
        .map(|cfg| {
            let key = cfg.key();
            RunningInlet {
                routes: routes
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, r)| r.clone()),
                cfg,
                tasks: Vec::new(),
                listeners: Vec::new(),
            }
        })
        .collect();
    for (l, owner) in listeners.into_iter().zip(listener_owners) {
        let run = start_listener(l, &opts, &shutdown).await?;
        if let (Some(run), Owner::Inlet(key)) = (run, owner) {
            if let Some(i) = inlets.iter_mut().find(|i| i.cfg.key() == key) {
                i.listeners.push(run);
            }
        }
    }
    let handles = sources_set.get();
    let mut sources: Vec<RunningSource> = Vec::new();
    for (p, owner) in pollers.into_iter().zip(poll_owners) {
        let task = Task::poll(p, &shutdown);
        match owner {
            Owner::Source(name) => {
                let cfg = config.sources.iter().find(|s| s.name == name).cloned();
                let handle = handles.iter().find(|h| h.name == name).cloned();
                if let (Some(cfg), Some(handle)) = (cfg, handle) {
                    sources.push(RunningSource { cfg, handle, task });
                }
            }
            Owner::Inlet(key) => {
                if let Some(i) = inlets.iter_mut().find(|i| i.cfg.key() == key) {
                    i.tasks.push(task);
                }
            }
        }
    }
    // Saved last: its own stop comes once the listeners have drained, so the final write holds
    // every request that was answered.
    let saver = match (counter_file, &config.persistence) {
        (Some(f), Some(p)) => Some(Saver::start(f, p.clone(), config.persisted_sources())),
        _ => None,
    };
    let web_router = SwapRouter::new(merge(
        endpoints.clone(),
        inlets.iter().filter_map(|i| i.routes.as_ref()),
    ));
    let web_opts = ServeOptions {
        web: opts.web_config.clone(),
        auth_header: AuthHeader::Authorization,
        ..opts.limits.clone()
    };
    let mut web_tasks = Vec::new();
    for socket in web {
        web_tasks.push(tokio::spawn(crate::http::serve::serve(
            socket,
            web_router.service(),
            web_opts.clone(),
            shutdown.clone(),
        )));
    }
    let mut running = Running {
        config,
        core,
        sources_set,
        inlet_lines,
        sources,
        inlets,
        saver,
        endpoints,
        web_router,
        opts,
        shutdown: shutdown.clone(),
    };
    loop {
        let request = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = request => {
                let Some(ReloadRequest(reply)) = r else {
                    requests = None;
                    continue;
                };
                let loaded = match &load {
                    Some(load) => load().map_err(|e| e.to_string()),
                    None => Err("no config file to read again".into()),
                };
                let result = match loaded {
                    Ok(new) => running.apply(new).await,
                    Err(e) => Err(e),
                };
                running.record(&result);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
    }
    shutdown.cancel();
    let mut served = Ok(());
    for t in web_tasks {
        if let Ok(Err(e)) = t.await {
            served = Err(RunError::Serve(e));
        }
    }
    for s in running.sources {
        s.task.stop().await;
    }
    for i in running.inlets {
        for t in i.tasks {
            t.stop().await;
        }
        for l in i.listeners {
            l.task.stop().await;
        }
    }
    if let Some(s) = running.saver {
        s.stop().await;
    }
    served
}

impl Running {
    /// Count and log a reload's outcome.
    fn record(&self, result: &Result<(), String>) {
        let live = self.core.sink.live();
        match result {
            Ok(()) => {
                live.config_reload_ok.set(1);
                live.config_reload_time
                    .set(self.core.clock.now().timestamp_millis() as f64 / 1000.0);
            }
            Err(e) => {
                live.config_reload_ok.set(0);
                tracing::error!(error = %e, "The config was not reloaded; the running one stays.");
            }
        }
    }

    /// Apply a new config: build what changed, then swap.
    async fn apply(&mut self, new: Config) -> Result<(), String> {
        let window = new.detect.window;
        // Build (nothing running is touched yet).
        let mut new_sources: Vec<Result<usize, parts::SourcePart>> = Vec::new();
        for cfg in &new.sources {
            match self.sources.iter().position(|s| s.cfg == *cfg) {
                Some(i) if window == self.config.detect.window => new_sources.push(Ok(i)),
                _ => new_sources.push(Err(
                    parts::source(cfg, &self.core, window).map_err(|e| e.to_string())?
                )),
            }
        }
        let mut new_inlets: Vec<Result<usize, BuiltInlet>> = Vec::new();
        for cfg in parts::inlets(&new) {
            match self.inlets.iter().position(|i| i.cfg == cfg) {
                Some(i) => new_inlets.push(Ok(i)),
                None => {
                    let mut part = parts::inlet(&cfg, &self.core).map_err(|e| e.to_string())?;
                    // Its listeners: kept where the same inlet already listens on the address
                    // with the same web config (their router is swapped), else bound now.
                    let mut runs = Vec::new();
                    for l in std::mem::take(&mut part.listeners) {
                        let kept = self
                            .inlets
                            .iter()
                            .filter(|i| i.cfg.key() == cfg.key())
                            .flat_map(|i| &i.listeners)
                            .any(|r| {
                                Some(r.address.clone()) == l.address.as_deref().map(listen_address)
                                    && r.web_config_file == l.web_config_file
                            });
                        if kept {
                            part.listeners.push(l);
                            runs.push(None);
                        } else {
                            let run = start_listener(l, &self.opts, &self.shutdown)
                                .await
                                .map_err(|e| e.to_string())?;
                            runs.push(run);
                        }
                    }
                    new_inlets.push(Err((part, runs)));
                }
            }
        }
        let persisted = new.persisted_sources();
        let saver_changes = match (&self.saver, &new.persistence) {
            (Some(s), Some(p)) => s.cfg != *p || s.sources != persisted,
            (None, None) => false,
            _ => true,
        };
        let new_file = match (&new.persistence, saver_changes) {
            (Some(p), true) => Some(
                CounterFile::restore(p, persisted.clone(), self.core.sink.live().clone())
                    .map_err(|e| format!("persistence: {e}"))?,
            ),
            _ => None,
        };

        // Swap.
        let mut old_sources: Vec<Option<RunningSource>> = std::mem::take(&mut self.sources)
            .into_iter()
            .map(Some)
            .collect();
        let mut sources = Vec::new();
        let (mut kept, mut started) = (0, 0);
        for n in new_sources {
            match n {
                Ok(i) => {
                    kept += 1;
                    sources.push(old_sources[i].take().expect("kept once"))
                }
                Err(part) => {
                    started += 1;
                    if let Some(old) = old_sources
                        .iter_mut()
                        .find(|o| o.as_ref().is_some_and(|o| o.cfg.name == part.cfg.name))
                        .and_then(Option::take)
                    {
                        old.task.stop().await;
                    }
                    sources.push(RunningSource {
                        cfg: part.cfg,
                        handle: part.handle,
                        task: Task::poll(part.poll, &self.shutdown),
                    });
                }
            }
        }
        let mut stopped = 0;
        for old in old_sources.into_iter().flatten() {
            stopped += 1;
            old.task.stop().await;
        }
        let mut old_inlets: Vec<Option<RunningInlet>> = std::mem::take(&mut self.inlets)
            .into_iter()
            .map(Some)
            .collect();
        let mut inlets = Vec::new();
        for n in new_inlets {
            match n {
                Ok(i) => {
                    kept += 1;
                    inlets.push(old_inlets[i].take().expect("kept once"))
                }
                Err((part, runs)) => {
                    started += 1;
                    let key = part.cfg.key();
                    let old = old_inlets
                        .iter_mut()
                        .find(|o| o.as_ref().is_some_and(|o| o.cfg.key() == key))
                        .and_then(Option::take);
                    let mut old_listeners = Vec::new();
                    if let Some(old) = old {
                        for t in old.tasks {
                            t.stop().await;
                        }
                        old_listeners = old.listeners;
                    }
                    let mut listeners = Vec::new();
                    let mut reused = part.listeners.into_iter();
                    for run in runs {
                        match run {
                            Some(r) => listeners.push(r),
                            None => {
                                let l = reused.next().expect("one per kept listener");
                                let address = l.address.as_deref().map(listen_address);
                                if let Some(pos) = old_listeners
                                    .iter()
                                    .position(|r| Some(r.address.clone()) == address)
                                {
                                    let r = old_listeners.remove(pos);
                                    r.router.set(l.router);
                                    listeners.push(r);
                                }
                            }
                        }
                    }
                    for r in old_listeners {
                        r.task.stop().await;
                    }
                    inlets.push(RunningInlet {
                        cfg: part.cfg,
                        routes: part.routes,
                        tasks: part
                            .polls
                            .into_iter()
                            .map(|p| Task::poll(p, &self.shutdown))
                            .collect(),
                        listeners,
                    });
                }
            }
        }
        for old in old_inlets.into_iter().flatten() {
            stopped += 1;
            for t in old.tasks {
                t.stop().await;
            }
            for l in old.listeners {
                l.task.stop().await;
            }
        }
        // Series of sources and inlets that are gone.
        let names: BTreeSet<String> = sources
            .iter()
            .map(|s| s.cfg.name.clone())
            .chain(inlets.iter().map(|i| i.cfg.source().to_string()))
            .collect();
        let old_names: BTreeSet<String> = self
            .config
            .sources
            .iter()
            .map(|s| s.name.clone())
            .chain(
                parts::inlets(&self.config)
                    .iter()
                    .map(|i| i.source().to_string()),
            )
            .collect();
        for gone in old_names.difference(&names) {
            self.core.sink.live().forget(gone);
        }
        if saver_changes {
            if let Some(s) = self.saver.take() {
                s.stop().await;
            }
            if let (Some(f), Some(p)) = (new_file, &new.persistence) {
                self.saver = Some(Saver::start(f, p.clone(), persisted));
            }
        }
        self.core
            .sink
            .reconfigure(new.detect.window, new.detect.retry_loop_failures);
        self.sources_set
            .set(sources.iter().map(|s| s.handle.clone()).collect());
        *self.inlet_lines.write().unwrap_or_else(|e| e.into_inner()) = new.inlet_lines();
        self.core
            .sink
            .live()
            .set_client_secrets(&new.client_secrets);
        self.web_router.set(merge(
            self.endpoints.clone(),
            inlets.iter().filter_map(|i| i.routes.as_ref()),
        ));
        self.sources = sources;
        self.inlets = inlets;
        self.config = new;
        self.core.exposition.advance_in_background();
        tracing::info!(kept, started, stopped, "Config reloaded.");
        Ok(())
    }
}
