//! Wiring: the exporter for a config, its HTTP router, its poll loops and listeners, and the
//! config reload ([`reload`]) that rebuilds only what changed. The one place that knows every
//! part; each inlet is one line in [`parts::inlets`].

mod parts;
mod reload;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::detect::Detector;
use crate::events::Listener;
use crate::http::serve::{self, AuthHeader, ServeOptions};
use crate::http::server::{self, Lifecycle, ReloadRequest};
use crate::http::web_config::{self, WebConfigHandle};
use crate::model::{CollectError, SourceSet};
use crate::pipeline::{Poll, Sink};
use crate::telemetry::persist::{CounterFile, PersistError};
use crate::telemetry::{Exposition, Live};
use parts::{Core, InletConfig};
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Options of the HTTP server.
#[derive(Clone)]
pub struct ServerOptions {
    pub telemetry_path: String,
    /// `--web.config.file`: TLS, client certificates, basic auth and headers of the web
    /// listener (every endpoint, the ingest API and the webhook included).
    pub web_config: Option<Arc<web_config::WebConfigHandle>>,
    /// The same for the proxy's listener (basic auth by `Proxy-Authorization` there); without
    /// it, the proxy section's `web_config_file`.
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
    #[error("the {name}'s web config: {cause}")]
    WebConfig {
        name: &'static str,
        cause: web_config::WebConfigError,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// Reading the config again while running: SIGHUP (sent by `main`) and, with
/// `--web.enable-lifecycle`, `POST /-/reload`.
pub struct Reload {
    /// Reads the config again (the file, with the command-line overrides).
    pub load: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
    /// Reload requests.
    pub requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    /// Where `POST /-/reload` sends; `None`: the lifecycle API is off (403).
    pub lifecycle: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
}

/// The exporter, wired: source handles, poll loops, routes, listeners and the exposition.
pub struct Exporter {
    /// Saves the push inlets' counters, when `persistence` is configured.
    pub counter_file: Option<CounterFile>,
    /// Every poll loop: the sources in config order, then the event tables.
    pub pollers: Vec<Box<dyn Poll>>,
    /// Listeners of the inlets' own (the proxy's).
    pub listeners: Vec<Listener>,
    /// The sources polled (a reload replaces the list).
    pub sources: SourceSet,
    pub exposition: Arc<Exposition>,
    pub clock: SharedClock,
    /// The event inlets, described for the landing page.
    inlet_lines: Arc<RwLock<Vec<String>>>,
    /// Routes of the inlets on the web listener, with the inlet each belongs to.
    routes: Vec<((&'static str, String), axum::Router)>,
    /// What was built, for a reload to compare with.
    config: Config,
    inlet_configs: Vec<InletConfig>,
    /// Per poller and per listener: the source name or inlet key it belongs to.
    poll_owners: Vec<reload::Owner>,
    listener_owners: Vec<reload::Owner>,
    core: Core,
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
        let detector = Arc::new(Detector::new(
            config.detect.window,
            config.detect.retry_loop_failures,
            clock.clone(),
        ));
        let live = Arc::new(Live::new());
        live.config_reload_ok.set(1);
        live.set_client_secrets(&config.client_secrets);
        live.config_reload_time
            .set(clock.now().timestamp_millis() as f64 / 1000.0);
        let sources = SourceSet::default();
        let exposition = Arc::new(Exposition::new(
            sources.clone(),
            live.clone(),
            detector.clone(),
            config.persistence.is_some(),
            config.relative_metrics,
        ));
        live.shard_count.set(i64::from(config.shard.total));
        live.shard_info
            .get_or_create(&vec![("shard", config.shard.index.to_string())])
            .set(1);
        let core = Core {
            sink: Sink::new(live.clone(), detector),
            exposition: exposition.clone(),
            clock: clock.clone(),
        };
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
        let mut poll_owners = Vec::new();
        let mut handles = Vec::new();
        for cfg in &config.sources {
            let part = parts::source(cfg, &core, config.detect.window)?;
            handles.push(part.handle);
            pollers.push(part.poll);
            poll_owners.push(reload::Owner::Source(cfg.name.clone()));
        }
        sources.set(handles);
        let inlet_configs = parts::inlets(config);
        let mut routes = Vec::new();
        let mut listeners = Vec::new();
        let mut listener_owners = Vec::new();
        for cfg in &inlet_configs {
            let part = parts::inlet(cfg, &core)?;
            let key = cfg.key();
            routes.extend(part.routes.map(|r| (key.clone(), r)));
            for p in part.polls {
                pollers.push(p);
                poll_owners.push(reload::Owner::Inlet(key.clone()));
            }
            for l in part.listeners {
                listeners.push(l);
                listener_owners.push(reload::Owner::Inlet(key.clone()));
            }
        }
        Ok(Exporter {
            counter_file,
            pollers,
            listeners,
            sources,
            exposition,
            clock,
            inlet_lines: Arc::new(RwLock::new(config.inlet_lines())),
            routes,
            config: config.clone(),
            inlet_configs,
            poll_owners,
            listener_owners,
            core,
        })
    }

    fn endpoints(&self, opts: &ServerOptions, lifecycle: Option<Lifecycle>) -> axum::Router {
        server::router(
            server::AppState {
                exposition: self.exposition.clone(),
                sources: self.sources.clone(),
                clock: self.clock.clone(),
                encoders: server::encoders(),
                telemetry_path: opts.telemetry_path.clone(),
                inlets: self.inlet_lines.clone(),
                lifecycle,
                shard: self.config.shard,
                detector: self.core.sink.detector().clone(),
            },
            &opts.telemetry_path,
        )
    }

    /// The HTTP router over this exporter: the endpoints and the inlets' routes.
    pub fn router(&self, opts: &ServerOptions) -> axum::Router {
        merge(
            self.endpoints(opts, None),
            self.routes.iter().map(|(_, r)| r),
        )
    }

    /// The reverse proxy's router, when configured (tests and the demo serve it themselves).
    pub fn proxy_router(&self) -> Option<axum::Router> {
        self.listeners
            .iter()
            .find(|l| l.name == "proxy")
            .map(|l| l.router.clone())
    }

    /// Poll every source and event table and serve on `listener` until `shutdown` is
    /// cancelled.
    pub async fn run(
        self,
        listener: TcpListener,
        opts: ServerOptions,
        shutdown: CancellationToken,
    ) -> Result<(), RunError> {
        self.serve(vec![listener], opts, shutdown, None).await
    }

    /// Like [`Exporter::run`] on several web listeners, reading the config again on each
    /// request of `reload`.
    pub async fn serve(
        self,
        web: Vec<TcpListener>,
        opts: ServerOptions,
        shutdown: CancellationToken,
        reload: Option<Reload>,
    ) -> Result<(), RunError> {
        reload::run(self, web, opts, shutdown, reload).await
    }
}

/// `base` with every router of `routes` merged in.
fn merge<'a>(base: axum::Router, routes: impl Iterator<Item = &'a axum::Router>) -> axum::Router {
    routes.cloned().fold(base, |r, routes| r.merge(routes))
}

/// A router that can be replaced while it is served: requests go to the one in force.
#[derive(Clone)]
struct SwapRouter(Arc<RwLock<axum::Router>>);

impl SwapRouter {
    fn new(r: axum::Router) -> Self {
        SwapRouter(Arc::new(RwLock::new(r)))
    }

    fn set(&self, r: axum::Router) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// A router that sends every request to the one in force.
    fn service(&self) -> axum::Router {
        let current = self.0.clone();
        axum::Router::new().fallback_service(tower::service_fn(
            move |req: axum::extract::Request| {
                let r = current.read().unwrap_or_else(|e| e.into_inner()).clone();
                async move {
                    use tower::ServiceExt;
                    r.oneshot(req).await
                }
            },
        ))
    }
}

/// The serve options of an inlet's own listener.
fn listener_options(l: &Listener, opts: &ServerOptions) -> Result<ServeOptions, RunError> {
    let web = match (&opts.proxy_web_config, &l.web_config_file) {
        (Some(h), _) if l.proxy_auth => Some(h.clone()),
        (_, Some(f)) => Some(
            WebConfigHandle::open(f).map_err(|cause| RunError::WebConfig {
                name: l.name,
                cause,
            })?,
        ),
        _ => None,
    };
    Ok(ServeOptions {
        web,
        auth_header: if l.proxy_auth {
            AuthHeader::ProxyAuthorization
        } else {
            AuthHeader::Authorization
        },
        upgrades: l.proxy_auth,
        ..opts.limits.clone()
    })
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

/// The serve loop of one listener, stopped by `stop`.
fn spawn_serve(
    name: &'static str,
    socket: TcpListener,
    router: axum::Router,
    opts: ServeOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serve::serve(socket, router, opts, stop).await {
            tracing::error!(listener = name, error = %e, "A listener stopped.");
        }
    })
}
