//! Command line, logging and wiring only.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use oauth_token_exporter::app::{listen_address, Reload};
use oauth_token_exporter::http::server::ReloadRequest;
use oauth_token_exporter::http::web_config;
use oauth_token_exporter::{clock::SystemClock, config, Exporter, ServerOptions};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// jemalloc: steady memory about half of glibc's after several polls (Cargo.toml has the
/// figures); `--features system-allocator` keeps the C library's.
#[cfg(all(unix, not(feature = "system-allocator")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "oauth-token-exporter",
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (revision ",
        env!("OAUTH_EXPORTER_REVISION"),
        ", rustc ",
        env!("OAUTH_EXPORTER_RUSTC"),
        ")"
    ),
    about = "Prometheus exporter for the health of OAuth 2.0 connections with rotating refresh tokens (Xero first)."
)]
struct Cli {
    /// Path to the YAML configuration file.
    #[arg(
        long = "config.file",
        env = "OAUTH_EXPORTER_CONFIG",
        default_value = "oauth-token-exporter.yml"
    )]
    config_file: std::path::PathBuf,
    /// Validate the configuration file, print the result and exit.
    #[arg(long = "config.check")]
    config_check: bool,
    /// Address to listen on for the web interface and telemetry (repeat it to listen on
    /// several).
    #[arg(long = "web.listen-address", default_value = ":9877", global = true)]
    listen_address: Vec<String>,
    /// Enable `POST /-/reload` (read the config again, as SIGHUP does) and `POST /-/quit`.
    #[arg(long = "web.enable-lifecycle")]
    enable_lifecycle: bool,
    /// Address of the reverse proxy in front of Xero (enables it with the defaults when the
    /// config has no `proxy` section).
    #[arg(long = "proxy.listen-address")]
    proxy_listen_address: Option<String>,
    /// Web config file (exporter-toolkit format): TLS, client certificates, bcrypt basic auth
    /// and security headers for every endpoint of the web listener.
    #[arg(long = "web.config.file")]
    web_config_file: Option<std::path::PathBuf>,
    /// Web config file of the reverse proxy's listener (basic auth there is by
    /// Proxy-Authorization); overrides `proxy.web_config_file`.
    #[arg(long = "proxy.web-config.file")]
    proxy_web_config_file: Option<std::path::PathBuf>,
    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", default_value = "/metrics")]
    telemetry_path: String,
    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_enum, default_value = "info", global = true)]
    log_level: LogLevel,
    /// Output format of log messages.
    #[arg(
        long = "log.format",
        value_enum,
        default_value = "logfmt",
        global = true
    )]
    log_format: LogFormat,
    /// Number of shards the fleet is split into: each instance exports the connections whose
    /// id hashes to its --shard.index (README "Running more than one").
    #[arg(
        long = "shard.total",
        env = "OAUTH_EXPORTER_SHARD_TOTAL",
        default_value_t = 1
    )]
    shard_total: u32,
    /// This instance's shard, 0 to --shard.total - 1, or a name ending in -<number> such as a
    /// StatefulSet pod's (--shard.index=$(POD_NAME)).
    #[arg(long = "shard.index", env = "OAUTH_EXPORTER_SHARD_INDEX")]
    shard_index: Option<String>,
    /// This instance's name in the state files that replicas share (event tables with a
    /// lease); default: the host name.
    #[arg(long = "instance.name", env = "OAUTH_EXPORTER_INSTANCE_NAME")]
    instance_name: Option<String>,
    /// Also export gauges that change on every poll but follow from a timestamp
    /// (oauth_refresh_token_age_seconds = time() - the last refresh).
    #[arg(long = "collector.relative-metrics")]
    relative_metrics: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the CA that `proxy.intercept` issues the intercepted hosts' certificates from:
    /// `ca.crt` (give it to the app to trust) and `ca.key` (mode 0600, a secret) in
    /// `--out-dir`. The CA may only issue for `--host` names (X.509 name constraints).
    InterceptCa {
        /// Directory to write `ca.crt` and `ca.key` to (existing files are not overwritten).
        #[arg(long)]
        out_dir: std::path::PathBuf,
        /// A host the CA may issue for (repeat; default Xero's identity server and API).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Days the CA certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    #[cfg(feature = "sim")]
    /// Run the simulated Xero on its own, to try an app or SDK against it (nothing reaches
    /// the real Xero): prints the token sets it authorised, one JSON object per line, and
    /// serves the identity server and API on one listener until interrupted.
    SimXero {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9880")]
        listen_address: String,
        /// The app's client id.
        #[arg(long, default_value = "app")]
        client_id: String,
        /// The app's client secret (a simulator's: not a real one).
        #[arg(long, default_value = "sim-secret")]
        client_secret: String,
        /// Connections to authorise at start (one organisation and user each).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Serve TLS with a test CA made on the spot, whose certificate is written here as
        /// `sim-ca.crt` (trust it in the client).
        #[arg(long)]
        tls_dir: Option<std::path::PathBuf>,
        /// The issuer the discovery document and id_tokens name (default Xero's, right when
        /// the exporter intercepts the client's traffic; give the URL clients reach this at
        /// otherwise).
        #[arg(long)]
        issuer: Option<String>,
    },
    #[cfg(feature = "sim")]
    /// Run on a temporary SQLite store with a simulated, changing Xero fleet.
    Demo {
        /// Connections in the simulated fleet.
        #[arg(long, default_value_t = 40)]
        connections: usize,
        /// How much faster than real time the simulated world runs (86400: a day per second,
        /// so idle tenants cross 45, 55 and 60 days within a minute).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Logfmt,
    Json,
}

fn init_logging(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Our own crate at the chosen level; dependencies one step quieter unless tracing.
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{level},sqlx=warn,hyper=warn,oauth_token_exporter={level}"
    ));
    use tracing_subscriber::prelude::*;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    // A panic is logged as one line in the chosen format (a poll that panics fails that poll
    // only, counted as `reason="internal"`; see the poll loop) instead of the default hook's
    // free text.
    std::panic::set_hook(Box::new(|info| {
        let message = oauth_token_exporter::pipeline::runner::panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(panic = %message, location, thread, "A thread panicked; please report it.");
    }));
}

/// Every signal that would end the process ends it gracefully instead (listeners drained,
/// the push inlets' counters saved): SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM.
/// SIGHUP reads the config again.
fn handle_signals(reload: tokio::sync::mpsc::Sender<ReloadRequest>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reading the config again.");
                if reload.send(ReloadRequest(None)).await.is_err() {
                    break;
                }
            }
        });
        let mut ends: Vec<(&'static str, tokio::signal::unix::Signal)> = [
            ("SIGTERM", SignalKind::terminate()),
            ("SIGINT", SignalKind::interrupt()),
            ("SIGQUIT", SignalKind::quit()),
            ("SIGUSR1", SignalKind::user_defined1()),
            ("SIGUSR2", SignalKind::user_defined2()),
            ("SIGALRM", SignalKind::alarm()),
        ]
        .into_iter()
        .map(|(name, kind)| (name, signal(kind).expect("installing a signal handler")))
        .collect();
        tokio::spawn(async move {
            let recvs = ends
                .iter_mut()
                .map(|(name, s)| Box::pin(async move { s.recv().await.map(|_| *name) }));
            let (name, _, _) = futures_util::future::select_all(recvs).await;
            tracing::info!(signal = name.unwrap_or("?"), "Shutting down.");
            t.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        drop(reload);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Shutting down.");
            t.cancel();
        });
    }
    token
}

/// `intercept-ca`: a new CA in `out_dir`, the key readable by its owner only.
fn intercept_ca(out_dir: &std::path::Path, hosts: &[String], days: u32) -> Result<()> {
    use std::io::Write;
    let hosts: Vec<String> = if hosts.is_empty() {
        oauth_token_exporter::config::defaults::INTERCEPT_HOSTS
            .iter()
            .map(|h| h.to_string())
            .collect()
    } else {
        hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    };
    if days == 0 {
        anyhow::bail!("--days must be at least 1");
    }
    let (cert, key) = oauth_token_exporter::events::intercept::create_ca(&hosts, days)
        .context("creating the CA failed")?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let write = |name: &str, text: &str, mode: u32| -> Result<()> {
        let path = out_dir.join(name);
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = open.open(&path).with_context(|| {
            format!("cannot create {} (it is never overwritten)", path.display())
        })?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write("ca.key", &key, 0o600)?;
    write("ca.crt", &cert, 0o644)?;
    println!(
        "Wrote {dir}/ca.crt (trust it in the app: SSL_CERT_FILE / REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, ...) and {dir}/ca.key (mode 0600: a secret, for the exporter only); the CA may issue for: {}.",
        hosts.join(", "),
        dir = out_dir.display()
    );
    Ok(())
}

/// `sim-xero`: the simulated Xero on its own.
#[cfg(feature = "sim")]
async fn sim_xero(
    address: &str,
    client_id: &str,
    client_secret: &str,
    connections: usize,
    tls_dir: Option<&std::path::Path>,
    issuer: Option<&str>,
) -> Result<()> {
    use oauth_token_exporter::sim::{tls, xero::SimXero};
    let listener = tokio::net::TcpListener::bind(listen_address(address))
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let local = listener.local_addr()?;
    let sim = SimXero::new(Arc::new(SystemClock));
    sim.add_client(client_id, client_secret);
    if let Some(i) = issuer {
        sim.set_issuer(i);
    }
    for n in 1..=connections {
        let user = format!("user-{n}");
        let tenant = sim.add_tenant(&format!("Org {n}"), &[&user]);
        let tokens = sim.authorize(client_id, &user, std::slice::from_ref(&tenant));
        println!(
            "{}",
            serde_json::json!({"connection": n, "tenant_id": tenant, "user": user, "token_set": tokens})
        );
    }
    let router = sim.router();
    match tls_dir {
        Some(dir) => {
            let t = tls::test_tls(&["localhost", "127.0.0.1", &local.ip().to_string()]);
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let ca = dir.join("sim-ca.crt");
            std::fs::write(&ca, &t.ca_pem)
                .with_context(|| format!("cannot write {}", ca.display()))?;
            tracing::info!(address = %local, ca = %ca.display(), "Simulated Xero listening over TLS.");
            tokio::select! {
                _ = tls::serve_tls(listener, router, t.server) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            tracing::info!(address = %local, "Simulated Xero listening.");
            tokio::select! {
                r = axum::serve(listener, router) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_level, cli.log_format);
    if let Some(Command::InterceptCa {
        out_dir,
        hosts,
        days,
    }) = &cli.command
    {
        return intercept_ca(out_dir, hosts, *days);
    }
    #[cfg(feature = "sim")]
    if let Some(Command::SimXero {
        listen_address: address,
        client_id,
        client_secret,
        connections,
        tls_dir,
        issuer,
    }) = &cli.command
    {
        return sim_xero(
            address,
            client_id,
            client_secret,
            *connections,
            tls_dir.as_deref(),
            issuer.as_deref(),
        )
        .await;
    }
    #[cfg(feature = "sim")]
    if let Some(Command::Demo { connections, speed }) = cli.command {
        use oauth_token_exporter::sim::demo;
        if !(speed.is_finite() && speed > 0.0) {
            anyhow::bail!("--speed must be a positive number, got {speed}");
        }
        let address = cli.listen_address.last().cloned().unwrap_or_default();
        let listener = tokio::net::TcpListener::bind(listen_address(&address))
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        tracing::info!(address = %listener.local_addr()?, "Demo listening; open it in a browser.");
        let opts = demo::DemoOptions {
            connections,
            speed,
            ..Default::default()
        };
        let (reload, _) = tokio::sync::mpsc::channel(1);
        return demo::run(listener, opts, handle_signals(reload))
            .await
            .map_err(anyhow::Error::msg);
    }
    let shard =
        match oauth_token_exporter::config::Shard::new(cli.shard_index.as_deref(), cli.shard_total)
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
    let overrides = config::Overrides {
        proxy_listen_address: cli.proxy_listen_address.clone(),
        proxy_web_config_file: cli.proxy_web_config_file.clone(),
        shard,
        relative_metrics: cli.relative_metrics,
        instance: cli
            .instance_name
            .clone()
            .unwrap_or_else(oauth_token_exporter::config::host_name),
    };
    let cfg = match config::load(&cli.config_file, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    // Web configs are checked before anything listens; every problem is printed.
    let open = |f: Option<&std::path::Path>| match f {
        None => None,
        Some(path) => match web_config::WebConfigHandle::open(path) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
    };
    let web = open(cli.web_config_file.as_deref());
    let proxy_web = open(
        cfg.inlets
            .proxy
            .as_ref()
            .and_then(|p| p.web_config_file.as_deref()),
    );
    for w in &cfg.warnings {
        if cli.config_check {
            eprintln!("{}: warning: {w}", cfg.file);
        } else {
            tracing::warn!(config = %cfg.file, key = %w.path, "{}", w.message);
        }
    }
    if cli.config_check {
        let mut parts = cfg.summary();
        for (what, w) in [("web config", &web), ("proxy web config", &proxy_web)] {
            if let Some(w) = w {
                parts.push(format!("{what}: {}", w.current().describe()));
            }
        }
        println!("{}: OK, {}", cfg.file, parts.join("; "));
        return Ok(());
    }
    let mut listeners = Vec::new();
    for a in &cli.listen_address {
        let l = tokio::net::TcpListener::bind(listen_address(a))
            .await
            .with_context(|| format!("cannot listen on {a}"))?;
        tracing::info!(address = %l.local_addr()?, "Listening.");
        listeners.push(l);
    }
    tracing::info!(config = %cfg.file, sources = cfg.sources.len(), version = env!("CARGO_PKG_VERSION"), lifecycle = cli.enable_lifecycle, "Starting oauth-token-exporter.");
    let opts = ServerOptions {
        telemetry_path: cli.telemetry_path,
        web_config: web,
        // The proxy's web config is opened from its section (where --proxy.web-config.file
        // puts it) when its listener starts, and again by a reload that changes it.
        proxy_web_config: None,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let shutdown = handle_signals(tx.clone());
    let path = cli.config_file.clone();
    let reload = Reload {
        load: Box::new(move || config::load(&path, &overrides)),
        requests: rx,
        lifecycle: cli.enable_lifecycle.then_some(tx),
    };
    Exporter::new(&cfg, Arc::new(SystemClock))?
        .serve(listeners, opts, shutdown, Some(reload))
        .await
        .map_err(anyhow::Error::from)
}
