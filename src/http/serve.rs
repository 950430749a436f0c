//! Serving a router on a listener, hardened: TLS and client certificates from the web config,
//! HTTP/1.1 and HTTP/2, bcrypt basic auth (checked off the async threads, unknown users as slow
//! as known ones) and security headers on every endpoint, a cap on open connections, deadlines
//! on TLS handshakes and request headers (slow clients cannot hold the server), and a graceful
//! shutdown.

use super::web_config::{WebConfig, WebConfigHandle};
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Which header carries basic-auth credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthHeader {
    /// `Authorization` (the web listener).
    Authorization,
    /// `Proxy-Authorization` (the reverse proxy, whose `Authorization` belongs to Xero); it is
    /// removed before the request is forwarded.
    ProxyAuthorization,
}

/// Limits and the web config of one listener.
#[derive(Clone)]
pub struct ServeOptions {
    pub web: Option<Arc<WebConfigHandle>>,
    pub auth_header: AuthHeader,
    /// Most connections open at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Deadline for a client to send a request's headers (and for an idle keep-alive
    /// connection to start its next request).
    pub header_read_timeout: Duration,
    /// Deadline for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// HTTP/1.1 connections may be upgraded (the proxy's `CONNECT` tunnels).
    pub upgrades: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            web: None,
            auth_header: AuthHeader::Authorization,
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            upgrades: false,
        }
    }
}

/// bcrypt checks running at once (each takes tens of milliseconds of CPU); more wait.
const BCRYPT_CONCURRENCY: usize = 4;

#[derive(Clone)]
struct Guard {
    web: Arc<WebConfigHandle>,
    header: AuthHeader,
    bcrypt: Arc<Semaphore>,
}

/// Decode `Basic base64(user:password)`.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine;
    let v = value.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Whether the credentials match; always runs one bcrypt check of the users' cost, so a wrong
/// user, a wrong password and a right one take the same time.
async fn check(cfg: &WebConfig, sem: &Semaphore, creds: Option<(String, String)>) -> bool {
    let Ok(_permit) = sem.acquire().await else {
        return false;
    };
    let (user, password) = creds.unwrap_or_default();
    let known = cfg.users.get(&user).cloned();
    let hash = match (&known, &cfg.dummy_hash) {
        (Some(h), _) => h.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => return false,
    };
    let ok = tokio::task::spawn_blocking(move || {
        bcrypt::verify(password.as_bytes(), hash.expose()).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    ok && known.is_some()
}

fn add_headers(cfg: &WebConfig, resp: &mut Response) {
    for (k, v) in &cfg.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
}

async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let cfg = g.web.current();
    if !cfg.users.is_empty() {
        let name: HeaderName = match g.header {
            AuthHeader::Authorization => header::AUTHORIZATION,
            AuthHeader::ProxyAuthorization => header::PROXY_AUTHORIZATION,
        };
        let creds = req.headers().get(&name).and_then(basic_credentials);
        if g.header == AuthHeader::ProxyAuthorization {
            req.headers_mut().remove(&name);
        }
        if !check(&cfg, &g.bcrypt, creds).await {
            let (status, challenge) = match g.header {
                AuthHeader::Authorization => (StatusCode::UNAUTHORIZED, header::WWW_AUTHENTICATE),
                AuthHeader::ProxyAuthorization => (
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    header::PROXY_AUTHENTICATE,
                ),
            };
            let mut resp = (
                status,
                [(challenge, "Basic realm=\"oauth-token-exporter\"")],
                "Unauthorized\n",
            )
                .into_response();
            add_headers(&cfg, &mut resp);
            return resp;
        }
    }
    let mut resp = next.run(req).await;
    add_headers(&cfg, &mut resp);
    resp
}

/// An HTTP/1.1 connection builder with the deadlines and bounds of `limits`.
fn http1(limits: &ServeOptions) -> hyper::server::conn::http1::Builder {
    http1_with(limits.header_read_timeout)
}

/// An HTTP/1.1 connection builder: a deadline for a request's headers, bounded buffers.
pub(crate) fn http1_with(header_read_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(64 * 1024);
    b
}

/// A TLS handshake on `io` within `deadline`; why not, in words (for a debug line).
pub(crate) async fn accept_tls<IO>(
    tls: Arc<rustls::ServerConfig>,
    io: IO,
    deadline: Duration,
) -> Result<tokio_rustls::server::TlsStream<IO>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(deadline, tokio_rustls::TlsAcceptor::from(tls).accept(io)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err("TLS handshake timed out".into()),
    }
}

/// Serve `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = match &opts.web {
        Some(web) => router.layer(axum::middleware::from_fn_with_state(
            Guard {
                web: web.clone(),
                header: opts.auth_header,
                bcrypt: Arc::new(Semaphore::new(BCRYPT_CONCURRENCY)),
            },
            guard,
        )),
        None => router,
    };
    let connections = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let web = opts.web.as_ref().map(|w| w.current());
        let service = TowerToHyperService::new(router.clone());
        let tls = web.as_ref().and_then(|w| w.tls.clone());
        let limits = opts.clone();
        let watcher = graceful.watcher();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // No protocol sniffing (which would wait for bytes without a deadline): plain
            // connections speak HTTP/1.1, TLS ones what ALPN chose.
            let result = match tls {
                None if limits.upgrades => {
                    upgradable(&limits, TokioIo::new(tcp), service, stop).await
                }
                None => {
                    let conn = http1(&limits).serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn).await
                }
                Some(tls) => {
                    let stream = match accept_tls(tls, tcp, limits.tls_handshake_timeout).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(peer = %peer, error = %e, "No TLS connection.");
                            return;
                        }
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .timer(TokioTimer::new())
                            .max_concurrent_streams(100)
                            .keep_alive_interval(Some(limits.header_read_timeout))
                            .keep_alive_timeout(limits.header_read_timeout)
                            .serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn).await
                    } else if limits.upgrades {
                        upgradable(&limits, TokioIo::new(stream), service, stop).await
                    } else {
                        let conn = http1(&limits).serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn).await
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    // Every connection holds a permit until it ends: the watched ones and the upgradable ones.
    let all = u32::try_from(opts.max_connections.max(1)).unwrap_or(u32::MAX);
    let drained = async {
        graceful.shutdown().await;
        let _ = connections.acquire_many(all).await;
    };
    if tokio::time::timeout(opts.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!("Requests still in flight at shutdown were cut.");
    }
    Ok(())
}

/// An HTTP/1.1 connection whose requests may be upgraded (`CONNECT`): once upgraded, the
/// connection's future ends and the tunnel lives on in the handler's task. On `shutdown` it
/// finishes the request in flight and closes.
async fn upgradable<I>(
    limits: &ServeOptions,
    io: I,
    service: TowerToHyperService<Router>,
    shutdown: CancellationToken,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = http1(limits).serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded_case_insensitively() {
        use base64::Engine;
        let v = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("prom:pa:ss")
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_str(&v).unwrap()),
            Some(("prom".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Bearer abc")),
            None
        );
    }
}
