//! oauth-token-exporter: a Prometheus exporter and alerting sidecar for the health of OAuth 2.0
//! connections with rotating refresh tokens (Xero first).
//!
//! # Layout
//! - [`config`]: the strict YAML config, validated once; every problem reported with its key.
//! - [`provider`]: provider profiles (Xero): token lifetimes and rotation.
//! - [`timestamp`]: cells read from stores and every timestamp shape apps use.
//! - [`sources`]: one file per store kind (`sqlite`, `postgres`, `mysql`, `redis`, `file`,
//!   `http`), presets, the field mapping and the poll loop.
//! - [`state`]: per-source snapshots and their aggregates.
//! - [`metrics`]: the metric catalogue: names, HELP, labels, closed reason enums.
//! - [`exposition`]: `/metrics` bodies: the state part deflated once per poll, live part per scrape.
//! - [`events`]: event inlets (event tables, ingest API, Nango webhooks, the reverse proxy), the
//!   classification of what they carry, and the persistence of the push inlets' counters.
//! - [`detect`]: detectors over the event stream (failing connections, retry loops, races).
//! - [`server`]: HTTP endpoints.
//! - [`serve`]: the hardened server loop (TLS, basic auth, headers, limits, graceful shutdown).
//! - [`web_config`]: `--web.config.file`, the exporter-toolkit web config format.
//! - [`clock`]: injected time.
//! - [`secret`]: a string type that never prints.
//! - [`demo`]: a live SQLite fleet for `oauth-token-exporter demo`.
//! - [`sim`]: the simulated Xero (identity server and API) and the simulated host app (workers,
//!   faults, its writable store) for the demo, tests and benchmarks.

pub mod clock;
pub mod config;
pub mod demo;
pub mod detect;
pub mod events;
pub mod exposition;
pub mod metrics;
pub mod provider;
pub mod secret;
pub mod serve;
pub mod server;
pub mod sim;
pub mod sources;
pub mod state;
pub mod timestamp;
pub mod web_config;

use clock::SharedClock;
use config::Config;
use exposition::Exposition;
use sources::{CollectError, Poller, SourceHandle};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Options of the HTTP server.
#[derive(Clone)]
pub struct ServerOptions {
    pub telemetry_path: String,
    /// `--web.config.file`: TLS, client certificates, basic auth and headers of the web
    /// listener (every endpoint, the ingest API and the webhook included).
    pub web_config: Option<Arc<web_config::WebConfigHandle>>,
    /// The same for the proxy's listener (basic auth by `Proxy-Authorization` there).
    pub proxy_web_config: Option<Arc<web_config::WebConfigHandle>>,
    /// Limits and deadlines of both listeners.
    pub limits: serve::ServeOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            telemetry_path: "/metrics".into(),
            web_config: None,
            proxy_web_config: None,
            limits: serve::ServeOptions::default(),
        }
    }
}

/// The exporter, wired: source handles, their pollers and the exposition.
pub struct Exporter {
    /// Saves the push inlets' counters, when `persistence` is configured.
    pub counter_file: Option<events::persist::CounterFile>,
    /// The event inlets configured, described for the landing page.
    pub inlets: Vec<String>,
    /// The reverse proxy, when configured.
    pub proxy: Option<config::Proxy>,
    /// Event tables tailed with a cursor.
    pub tables: Vec<events::table::TablePoller>,
    pub ingest: Option<config::Ingest>,
    pub nango_webhook: Option<config::NangoWebhook>,
    pub sources: Vec<Arc<SourceHandle>>,
    pub exposition: Arc<Exposition>,
    pub pollers: Vec<Poller>,
    pub clock: SharedClock,
}

impl Exporter {
    /// Build the exporter for a config. Fails on a store the driver cannot open (a DSN it cannot
    /// parse, an unreadable CA file) or a persistence file that is not ours; the error names
    /// the part (`source app`, `event table app_events`, `persistence`).
    pub fn new(config: &Config, clock: SharedClock) -> Result<Exporter, (String, CollectError)> {
        let generation = Arc::new(AtomicU64::new(0));
        let sources: Vec<Arc<SourceHandle>> = config
            .sources
            .iter()
            .map(|s| Arc::new(SourceHandle::new(s)))
            .collect();
        let detector = detect::Detector::new(
            config.detect.window,
            config.detect.retry_loop_failures,
            clock.clone(),
        );
        let exposition = Exposition::new(sources.clone(), generation.clone(), detector);
        let exposition = Arc::new(match &config.persistence {
            Some(_) => exposition.with_persistence(),
            None => exposition,
        });
        if let Some(i) = &config.ingest {
            exposition.live.events.init(i.provider.as_str(), &i.source);
            exposition
                .live
                .detector
                .init(i.provider.as_str(), &i.source);
        }
        if let Some(n) = &config.nango_webhook {
            exposition.live.events.init(n.provider.as_str(), &n.source);
            exposition
                .live
                .detector
                .init(n.provider.as_str(), &n.source);
        }
        for t in &config.event_tables {
            exposition
                .live
                .detector
                .init(t.store.provider.name(), &t.name);
        }
        // The push inlets' counters continue from the file before anything is counted.
        let counter_file = match &config.persistence {
            Some(p) => {
                let mut names: Vec<String> = config
                    .push_inlet_sources()
                    .into_iter()
                    .map(|(_, source)| source.to_string())
                    .collect();
                names.sort();
                names.dedup();
                Some(
                    events::persist::CounterFile::restore(p, names, exposition.live.clone())
                        .map_err(|e| ("persistence".to_string(), CollectError::Document(e)))?,
                )
            }
            None => None,
        };
        let pollers = config
            .sources
            .iter()
            .zip(&sources)
            .map(|(cfg, h)| {
                Poller::new(
                    cfg.clone(),
                    h.clone(),
                    exposition.clone(),
                    clock.clone(),
                    generation.clone(),
                    config.detect.window,
                )
                .map_err(|e| (format!("source {}", cfg.name), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tables = config
            .event_tables
            .iter()
            .map(|t| {
                events::table::TablePoller::new(t.clone(), exposition.live.clone())
                    .map_err(|e| (format!("event table {}", t.name), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Exporter {
            counter_file,
            inlets: config.inlets(),
            proxy: config.proxy.clone(),
            tables,
            ingest: config.ingest.clone(),
            nango_webhook: config.nango_webhook.clone(),
            sources,
            exposition,
            pollers,
            clock,
        })
    }

    /// The HTTP router over this exporter.
    pub fn router(&self, opts: &ServerOptions) -> axum::Router {
        let router = server::router(
            server::AppState {
                exposition: self.exposition.clone(),
                sources: self.sources.clone(),
                clock: self.clock.clone(),
                encoders: server::encoders(),
                telemetry_path: opts.telemetry_path.clone(),
                inlets: self.inlets.clone(),
            },
            &opts.telemetry_path,
        );
        let live = self.exposition.live.clone();
        let router = match &self.ingest {
            Some(cfg) => router.merge(events::ingest::router(cfg.clone(), live.clone())),
            None => router,
        };
        match &self.nango_webhook {
            Some(cfg) => router.merge(events::nango::router(cfg.clone(), live)),
            None => router,
        }
    }

    /// The reverse proxy's router, when configured (served on its own listener).
    pub fn proxy_router(&self) -> Option<axum::Router> {
        self.proxy
            .as_ref()
            .map(|p| events::proxy::router(p.clone(), self.exposition.live.clone()))
    }

    /// Poll every source and serve until `shutdown` is cancelled.
    pub async fn run(
        self,
        listener: TcpListener,
        opts: ServerOptions,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let router = self.router(&opts);
        let mut tasks = Vec::new();
        if let (Some(proxy), Some(addr)) = (
            self.proxy_router(),
            self.proxy.as_ref().and_then(|p| p.listen_address.clone()),
        ) {
            let addr = if addr.starts_with(':') {
                format!("0.0.0.0{addr}")
            } else {
                addr
            };
            let listener = TcpListener::bind(&addr).await?;
            tracing::info!(address = %listener.local_addr()?, "Reverse proxy listening.");
            let stop = shutdown.clone();
            let proxy_opts = serve::ServeOptions {
                web: opts.proxy_web_config.clone(),
                auth_header: serve::AuthHeader::ProxyAuthorization,
                ..opts.limits.clone()
            };
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve::serve(listener, proxy, proxy_opts, stop).await {
                    tracing::error!(error = %e, "The reverse proxy stopped.");
                }
            }));
        }
        for p in self.pollers {
            tasks.push(tokio::spawn(p.run(shutdown.clone())));
        }
        for t in self.tables {
            tasks.push(tokio::spawn(t.run(shutdown.clone())));
        }
        // Saved last: its own stop comes once the listeners have drained, so the final write
        // holds every request that was answered.
        let saver_stop = CancellationToken::new();
        let counter_file = self
            .counter_file
            .map(|f| tokio::spawn(f.run(saver_stop.clone())));
        let web_opts = serve::ServeOptions {
            web: opts.web_config.clone(),
            auth_header: serve::AuthHeader::Authorization,
            ..opts.limits.clone()
        };
        let served = serve::serve(listener, router, web_opts, shutdown.clone()).await;
        shutdown.cancel();
        for t in tasks {
            let _ = t.await;
        }
        saver_stop.cancel();
        if let Some(f) = counter_file {
            let _ = f.await;
        }
        served
    }
}

/// Run the exporter for `config` on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    opts: ServerOptions,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let exporter = Exporter::new(&config, clock).map_err(|(what, e)| format!("{what}: {e}"))?;
    exporter
        .run(listener, opts, shutdown)
        .await
        .map_err(|e| format!("server failed: {e}"))
}
