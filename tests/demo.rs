//! The demo end to end: a live fleet, the simulated Xero behind the proxy, moving counters.

use oauth_token_exporter::sim::demo::{self, DemoOptions};
use std::io::{Read, Write};
use std::time::Duration;

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_a_live_fleet_whose_gauges_and_counters_move() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let opts = DemoOptions {
        connections: 40,
        tick: Duration::from_millis(10),
        poll_interval: Duration::from_secs(1),
        speed: 1.0,
    };
    let demo = tokio::spawn(demo::run(listener, opts, shutdown.clone()));
    let mut text = String::new();
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
            .await
            .unwrap();
        if sum(&text, "oauth_token_refresh_failures_total{provider=\"xero\",source=\"demo_proxy\",error=\"invalid_grant\"") > 0.0
            && sum(&text, "oauth_api_requests_total{") > 0.0
            && sum(&text, "oauth_refresh_token_age_seconds{") > 0.0
            && sum(
                &text,
                "oauth_token_refreshes_total{provider=\"xero\",source=\"demo_events\"",
            ) > 0.0
            && sum(&text, "oauth_api_rate_limit_remaining{") > 0.0
            // The app marks a dead connection after its failure; the next poll shows it.
            && sum(
                &text,
                "oauth_connections{provider=\"xero\",source=\"demo\",status=\"needs_reauth\"",
            ) > 0.0
        {
            break;
        }
    }
    assert!(
        sum(&text, "oauth_refresh_token_age_seconds{") > 0.0,
        "{text}"
    );
    assert!(
        sum(
            &text,
            "oauth_connections{provider=\"xero\",source=\"demo\",status=\"needs_reauth\""
        ) > 0.0
    );
    assert!(
        sum(&text, "oauth_token_refreshes_total{") > 0.0,
        "refreshes through the proxy"
    );
    assert!(sum(&text, "oauth_token_refresh_failures_total{provider=\"xero\",source=\"demo_proxy\",error=\"invalid_grant\"") > 0.0, "the changed password shows");
    assert!(sum(&text, "oauth_api_requests_total{") > 0.0);
    assert!(
        sum(
            &text,
            "oauth_token_refreshes_total{provider=\"xero\",source=\"demo_events\""
        ) > 0.0,
        "the app's event table is tailed"
    );
    assert!(sum(&text, "oauth_api_rate_limit_remaining{") > 0.0);
    let landing = tokio::task::spawn_blocking(move || get(addr, "/"))
        .await
        .unwrap();
    assert!(landing.contains("exported connection(s) by most likely cause"));
    // conn-0039 is paused (never synced) and 66 days idle: expired whatever else happened.
    let row = landing
        .split("<tr>")
        .find(|r| r.contains("<td>conn-0039</td>"))
        .unwrap_or_else(|| panic!("conn-0039 is listed:\n{landing}"));
    assert!(
        row.contains("<td>idle_expiry</td>"),
        "the demo's idle tenant is diagnosed idle_expiry: {row}"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), demo)
        .await
        .expect("the demo stops on shutdown")
        .unwrap()
        .unwrap();
}
