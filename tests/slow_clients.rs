//! Slow and numerous clients cannot hold the server: connections that trickle their headers,
//! or sit idle after a request, are closed after the header deadline; past the connection cap,
//! new clients wait and are served as soon as slots free up; the poll loop keeps polling.

mod common;
use common::*;
use oauth_token_exporter::http::serve::ServeOptions;
use oauth_token_exporter::ServerOptions;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn start(limits: ServeOptions) -> (std::net::SocketAddr, CancellationToken) {
    let (_d, db, pool) =
        sqlite_db(&["CREATE TABLE xero_tokens (id TEXT, tenant_id TEXT, expires_at INTEGER)"])
            .await;
    sqlx::query("INSERT INTO xero_tokens VALUES ('c1', 't1', strftime('%s','now') + 600)")
        .execute(&pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let copy = dir.join("app.db");
    std::fs::copy(&db, &copy).unwrap();
    let cfg = parse_config(&format!(
        "global:\n  poll_interval: 1s\n  poll_timeout: 1s\nsources:\n  - {{name: app, kind: sqlite, dsn: {}, preset: xero_tokens}}\n",
        copy.display()
    ));
    let clock: oauth_token_exporter::clock::SharedClock =
        std::sync::Arc::new(oauth_token_exporter::clock::SystemClock);
    let e = oauth_token_exporter::Exporter::new(&cfg, clock).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(e.run(
        listener,
        ServerOptions {
            limits,
            ..Default::default()
        },
        stop.clone(),
    ));
    (addr, stop)
}

/// A full GET over a fresh connection; the status line and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Whether the server closed `s` (a read returns end of stream or an error) within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_headers_or_idling_are_cut_at_the_deadline_while_others_are_served() {
    let (addr, stop) = start(ServeOptions {
        header_read_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 50 slowloris clients: one header byte at a time.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // A client that made one request and then sits on its keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Meanwhile scrapes are served at once.
    let started = Instant::now();
    for _ in 0..5 {
        let r = get(addr, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        for s in &mut slow {
            let _ = s.write_all(b"a").await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "scrapes were not held up"
    );
    // The trickling clients are cut at the deadline, although they keep sending.
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(4)).await,
            "slow client {i} still open"
        );
    }
    assert!(
        closed_within(&mut idle, Duration::from_secs(4)).await,
        "the idle keep-alive connection is closed"
    );
    // And the source kept polling through it all.
    let r = get(addr, "/metrics").await;
    let ts = r
        .lines()
        .find(|l| l.starts_with("oauth_exporter_source_last_success_timestamp_seconds{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - ts < 3.0, "last successful poll {:.1}s ago", now - ts);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_clients_wait_and_are_served_when_slots_free_up() {
    let (addr, stop) = start(ServeOptions {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Eight clients take every slot and send nothing.
    let mut hogs = Vec::new();
    for _ in 0..8 {
        hogs.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), get(addr, "/-/healthy"))
        .await
        .expect("served once the hogs are cut");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the ninth client waited for a slot ({waited:?})"
    );
    for h in &mut hogs {
        assert!(closed_within(h, Duration::from_secs(2)).await);
    }
    stop.cancel();
}
