//! Wiring: the exporter for a config, its HTTP router, its poll loops and listeners. The one
//! place that knows every part; each inlet is one line in [`inlets`].

use crate::clock::SharedClock;
use crate::config::{Config, Inlets};
use crate::detect::Detector;
use crate::events::{Context, Inlet, Listener};
use crate::http::serve::{self, AuthHeader, ServeOptions};
use crate::http::{server, web_config};
use crate::model::{CollectError, SourceHandle};
use crate::pipeline::{Health, Poll, Runner, Sink, SourcePoller, Subject};
use crate::telemetry::persist::{CounterFile, PersistError};
use crate::telemetry::{Exposition, Live};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every inlet configured. A new inlet adds one line here.
fn inlets(c: &Inlets) -> Vec<&dyn Inlet> {
    let mut v: Vec<&dyn Inlet> = Vec::new();
    v.extend(c.event_tables.iter().map(|t| t as &dyn Inlet));
    v.extend(c.ingest.iter().map(|i| i as &dyn Inlet));
    v.extend(c.nango_webhook.iter().map(|n| n as &dyn Inlet));
    v.extend(c.proxy.iter().map(|p| p as &dyn Inlet));
    v
}

/// Options of the HTTP server.
#[derive(Clone)]
pub struct ServerOptions {
    pub telemetry_path: String,
    /// `--web.config.file`: TLS, client certificates, basic auth and headers of the web
    /// listener (every endpoint, the ingest API and the webhook included).
    pub web_config: Option<Arc<web_config::WebConfigHandle>>,
    /// The same for the proxy's listener (basic auth by `Proxy-Authorization` there).
    pub proxy_web_config: Option<Arc<web_config::WebConfigHandle>>,
    /// Limits and deadlines of every listener.
    pub limits: ServeOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            telemetry_path: "/metrics".into(),
            web_config: None,
            proxy_web_config: None,
            limits: ServeOptions::default(),
        }
    }
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A source's store cannot be opened (a DSN the driver cannot parse, an unreadable CA).
    #[error("source {name}: {cause}")]
    Source { name: String, cause: CollectError },
    /// An inlet's store cannot be opened.
    #[error("{part}: {cause}")]
    Inlet { part: String, cause: CollectError },
    /// The persistence file is unreadable or not ours.
    #[error("persistence: {0}")]
    Persistence(#[from] PersistError),
}

/// Why the exporter stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot listen on {address} for the {name}: {cause}")]
    Listen {
        name: &'static str,
        address: String,
        cause: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// The exporter, wired: source handles, poll loops, routes, listeners and the exposition.
pub struct Exporter {
    /// Saves the push inlets' counters, when `persistence` is configured.
    pub counter_file: Option<CounterFile>,
    /// The event inlets configured, described for the landing page.
    pub inlet_lines: Vec<String>,
    /// Every poll loop: the sources in config order, then the event tables.
    pub pollers: Vec<Box<dyn Poll>>,
    /// Routes of the inlets on the web listener.
    routes: Vec<axum::Router>,
    /// Listeners of the inlets' own (the proxy's).
    pub listeners: Vec<Listener>,
    pub sources: Vec<Arc<SourceHandle>>,
    pub exposition: Arc<Exposition>,
    pub clock: SharedClock,
}

/// `:9877` means every interface, as in the Prometheus exporters.
pub fn listen_address(a: &str) -> String {
    if a.starts_with(':') {
        format!("0.0.0.0{a}")
    } else {
        a.to_string()
    }
}

impl Exporter {
    /// Build the exporter for a config. Fails on a store the driver cannot open (a DSN it cannot
    /// parse, an unreadable CA file) or a persistence file that is not ours, naming the part.
    pub fn new(config: &Config, clock: SharedClock) -> Result<Exporter, BuildError> {
        let generation = Arc::new(AtomicU64::new(0));
        let sources: Vec<Arc<SourceHandle>> = config
            .sources
            .iter()
            .map(|s| {
                let labels = s.mapping.labels.iter().map(|(n, _)| n.clone()).collect();
                Arc::new(SourceHandle::new(&s.name, s.kind(), &s.provider, labels))
            })
            .collect();
        let detector = Arc::new(Detector::new(
            config.detect.window,
            config.detect.retry_loop_failures,
            clock.clone(),
        ));
        let live = Arc::new(Live::new());
        let exposition = Arc::new(Exposition::new(
            sources.clone(),
            live.clone(),
            detector.clone(),
            config.persistence.is_some(),
            generation.clone(),
        ));
        let sink = Sink::new(live.clone(), detector);
        // The push inlets' counters continue from the file before anything is counted.
        let counter_file = match &config.persistence {
            Some(p) => Some(CounterFile::restore(
                p,
                config.persisted_sources(),
                live.clone(),
            )?),
            None => None,
        };
        let mut pollers: Vec<Box<dyn Poll>> = Vec::new();
        for (cfg, handle) in config.sources.iter().zip(&sources) {
            let health = Health::new(live.clone(), &cfg.name, Subject::Source, handle.provider);
            let poller = SourcePoller::new(
                cfg.clone(),
                handle.clone(),
                exposition.clone(),
                sink.clone(),
                clock.clone(),
                generation.clone(),
                config.detect.window,
            )
            .map_err(|cause| BuildError::Source {
                name: cfg.name.clone(),
                cause,
            })?;
            pollers.push(Box::new(Runner::new(poller, health, clock.clone())));
        }
        let ctx = Context {
            sink,
            clock: clock.clone(),
        };
        let mut routes = Vec::new();
        let mut listeners = Vec::new();
        for inlet in inlets(&config.inlets) {
            let wired = inlet.wire(&ctx).map_err(|cause| BuildError::Inlet {
                part: inlet.name(),
                cause,
            })?;
            routes.extend(wired.routes);
            pollers.extend(wired.polls);
            listeners.extend(wired.listeners);
        }
        Ok(Exporter {
            counter_file,
            inlet_lines: config.inlet_lines(),
            pollers,
            routes,
            listeners,
            sources,
            exposition,
            clock,
        })
    }

    /// The HTTP router over this exporter: the endpoints and the inlets' routes.
    pub fn router(&self, opts: &ServerOptions) -> axum::Router {
        let router = server::router(
            server::AppState {
                exposition: self.exposition.clone(),
                sources: self.sources.clone(),
                clock: self.clock.clone(),
                encoders: server::encoders(),
                telemetry_path: opts.telemetry_path.clone(),
                inlets: self.inlet_lines.clone(),
            },
            &opts.telemetry_path,
        );
        self.routes
            .iter()
            .cloned()
            .fold(router, |r, routes| r.merge(routes))
    }

    /// The reverse proxy's router, when configured (tests and the demo serve it themselves).
    pub fn proxy_router(&self) -> Option<axum::Router> {
        self.listeners
            .iter()
            .find(|l| l.name == "proxy")
            .map(|l| l.router.clone())
    }

    /// Poll every source and event table and serve until `shutdown` is cancelled.
    pub async fn run(
        self,
        listener: TcpListener,
        opts: ServerOptions,
        shutdown: CancellationToken,
    ) -> Result<(), RunError> {
        let router = self.router(&opts);
        let mut tasks = Vec::new();
        // Every listener of the inlets is bound before anything runs: one that cannot listen
        // stops the start.
        let mut bound = Vec::new();
        for l in self.listeners {
            let Some(addr) = l.address.as_deref().map(listen_address) else {
                continue;
            };
            let socket = TcpListener::bind(&addr)
                .await
                .map_err(|cause| RunError::Listen {
                    name: l.name,
                    address: addr.clone(),
                    cause,
                })?;
            if let Ok(a) = socket.local_addr() {
                tracing::info!(listener = l.name, address = %a, "Listening.");
            }
            bound.push((l, socket));
        }
        for (l, socket) in bound {
            let stop = shutdown.clone();
            let serve_opts = ServeOptions {
                web: if l.proxy_auth {
                    opts.proxy_web_config.clone()
                } else {
                    opts.web_config.clone()
                },
                auth_header: if l.proxy_auth {
                    AuthHeader::ProxyAuthorization
                } else {
                    AuthHeader::Authorization
                },
                ..opts.limits.clone()
            };
            let name = l.name;
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve::serve(socket, l.router, serve_opts, stop).await {
                    tracing::error!(listener = name, error = %e, "A listener stopped.");
                }
            }));
        }
        for p in self.pollers {
            tasks.push(tokio::spawn(p.run(shutdown.clone())));
        }
        // Saved last: its own stop comes once the listeners have drained, so the final write
        // holds every request that was answered.
        let saver_stop = CancellationToken::new();
        let counter_file = self
            .counter_file
            .map(|f| tokio::spawn(f.run(saver_stop.clone())));
        let web_opts = ServeOptions {
            web: opts.web_config.clone(),
            auth_header: AuthHeader::Authorization,
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
        served.map_err(RunError::Serve)
    }
}

/// Run the exporter for `config` on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    opts: ServerOptions,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    Exporter::new(&config, clock)?
        .run(listener, opts, shutdown)
        .await
}
