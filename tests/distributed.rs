//! A fleet of the real binary behind real distributed engines (README "Running more than
//! one"): 3 shards of 2 HA replicas each (6 processes) read one PostgreSQL store of 20 Xero
//! connections and tail one event table with a lease per shard. They are scraped
//! - by two vmagents in cluster mode (`-promscrape.cluster.membersCount=2`, replication factor
//!   2, so every target is scraped twice) writing to VictoriaMetrics with
//!   `-dedup.minScrapeInterval`, where vmalert evaluates the shipped rules;
//! - and by Prometheus in agent mode remote-writing to a receiving Prometheus that evaluates the
//!   shipped rules (every `for:` divided by 30, as in tests/e2e.rs).
//!
//! Both must show the fleet totals (20 connections, then 5 server errors), each connection's series
//! once per replica and never twice per engine (dedup), and exactly the expected alerts:
//! `OAuthRefreshTokenExpired` (one connection idle 61 days, still marked active) and
//! `OAuthTokenEndpointErrors` (5 server errors across the shards); not
//! `OAuthConnectionCountNearCap`, which the 6 copies of 20 connections fired before the rules
//! were replica-safe, nor any lease or shard alert. Uses Debian's `victoria-metrics` 1.79 and
//! `prometheus` 2.42 packages.

mod common;
use common::alerting::{percent_encode, scaled_rules, wait_ready, Proc};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

const SHARDS: u32 = 3;
const REPLICAS: u32 = 2;
const CONNECTIONS: usize = 20;

struct Engine {
    name: &'static str,
    /// Base URL of the Prometheus query API (`/api/v1/query`).
    query: String,
    /// Base URL of the rule evaluator's API (`/api/v1/alerts`).
    alerts: String,
}

impl Engine {
    async fn value(&self, http: &reqwest::Client, promql: &str) -> Option<f64> {
        let r: Value = http
            .get(format!(
                "{}/api/v1/query?query={}",
                self.query,
                percent_encode(promql)
            ))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// Alerts firing (`pending`: or pending, i.e. every alert whose expression holds).
    async fn alerts(&self, http: &reqwest::Client, pending: bool) -> BTreeSet<String> {
        let Ok(r) = http
            .get(format!("{}/api/v1/alerts", self.alerts))
            .send()
            .await
        else {
            return BTreeSet::new();
        };
        let v: Value = r.json().await.unwrap_or_default();
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| pending || a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect()
    }
}

/// Polls `check` (`Ok` when satisfied, `Err` what it saw instead) until `limit`, then panics with
/// the last thing seen and the processes' log tails, engines first (started last).
async fn until(
    what: &str,
    limit: Duration,
    procs: &[Proc],
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let t = Instant::now();
    let mut seen = String::new();
    while t.elapsed() < limit {
        match check().await {
            Ok(()) => return,
            Err(s) => seen = s,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs: Vec<String> = procs.iter().rev().map(|p| p.log_tail()).collect();
    panic!(
        "timed out after {limit:?} waiting for {what}; last seen: {seen}\n{}",
        logs.join("\n----\n")
    );
}

/// `Ok` when the engine answers `want`, else what it answered.
async fn equals(e: &Engine, http: &reqwest::Client, q: &str, want: f64) -> Result<(), String> {
    match e.value(http, q).await {
        Some(v) if v == want => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmagent_cluster_victoriametrics_and_prometheus_agent_mode_see_a_sharded_replicated_fleet_once(
) {
    let test = "vmagent_cluster_victoriametrics_and_prometheus_agent_mode_see_a_sharded_replicated_fleet_once";
    if !server_or_skip(test, "PostgreSQL", &pg_url()).await {
        return;
    }
    let (Some(vm), Some(vmagent), Some(vmalert), Some(prometheus)) = (
        tool(test, &["victoria-metrics"]),
        tool(test, &["vmagent"]),
        tool(test, &["vmalert"]),
        tool(test, &["prometheus"]),
    ) else {
        return;
    };
    oauth_token_exporter::sources::install_tls_provider();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The store: 20 active Xero connections (c0 idle for 61 days), and 5 server errors.
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let schema = unique("distributed");
    let mut stmts = vec![
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.tokens (id text, tenant text, lr timestamptz, status text)"),
        format!("CREATE TABLE {schema}.events (id bigserial PRIMARY KEY, type text, connection text, outcome text, error text)"),
    ];
    for i in 0..CONNECTIONS {
        let days = if i == 0 { 61 } else { 1 };
        stmts.push(format!(
            "INSERT INTO {schema}.tokens VALUES ('c{i}', 't{i}', now() - interval '{days} days', 'active')"
        ));
    }
    for s in &stmts {
        sqlx::query(s).execute(&pool).await.unwrap();
    }
    let config = d.join("exporter.yml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - {{name: app, kind: postgres, dsn: '{url}', query: 'SELECT id, tenant, lr, status FROM {schema}.tokens', interval: 1s, timeout: 1s, fields: {{connection: id, tenant: tenant, last_refresh: lr, status: status}}}}\n\
             event_tables:\n  - {{name: app_events, kind: postgres, dsn: '{url}', table: {schema}.events, columns: {{outcome: outcome, error: error}}, state_file: {state}, start: beginning, lease: true, interval: 1s, timeout: 1s}}\n",
            url = pg_url(),
            state = d.join("events.state").display(),
        ),
    )
    .unwrap();

    // 3 shards x 2 replicas.
    let mut procs = Vec::new();
    let mut targets = Vec::new();
    for shard in 0..SHARDS {
        for replica in 0..REPLICAS {
            let port = free_port();
            targets.push(format!("127.0.0.1:{port}"));
            procs.push(Proc::start(
                Command::new(env!("CARGO_BIN_EXE_oauth-token-exporter"))
                    .arg("--config.file")
                    .arg(&config)
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg(format!("--shard.total={SHARDS}"))
                    // As in a StatefulSet: the index from the pod name.
                    .arg(format!("--shard.index=exporter-s{replica}-{shard}"))
                    .arg(format!("--instance.name=s{shard}r{replica}")),
                d.join(format!("exporter-{shard}-{replica}.log")),
            ));
        }
    }
    for (t, p) in targets.iter().zip(&procs) {
        wait_ready(&http, &format!("http://{t}/-/ready"), p).await;
    }
    let rules = d.join("rules.yml");
    std::fs::write(&rules, scaled_rules()).unwrap();
    let scrape = json!({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "oauth-token-exporter", "static_configs": [{"targets": targets}]}]
    });

    // VictoriaMetrics, two vmagents in cluster mode, vmalert.
    let vm_port = free_port();
    procs.push(Proc::start(
        Command::new(vm)
            .arg(format!("-storageDataPath={}", d.join("vm").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{vm_port}"))
            .arg("-dedup.minScrapeInterval=1s")
            .arg("-search.latencyOffset=1s")
            .arg("-search.disableCache"),
        d.join("vm.log"),
    ));
    let vm_url = format!("http://127.0.0.1:{vm_port}");
    wait_ready(&http, &format!("{vm_url}/health"), procs.last().unwrap()).await;
    let scrape_file = d.join("scrape.yml");
    std::fs::write(&scrape_file, scrape.to_string()).unwrap();
    for member in 0..2 {
        let port = free_port();
        procs.push(Proc::start(
            Command::new(&vmagent)
                .arg(format!("-promscrape.config={}", scrape_file.display()))
                .arg("-promscrape.cluster.membersCount=2")
                .arg(format!("-promscrape.cluster.memberNum={member}"))
                .arg("-promscrape.cluster.replicationFactor=2")
                .arg(format!("-remoteWrite.url={vm_url}/api/v1/write"))
                .arg(format!(
                    "-remoteWrite.tmpDataPath={}",
                    d.join(format!("vmagent{member}")).display()
                ))
                .arg(format!("-httpListenAddr=127.0.0.1:{port}")),
            d.join(format!("vmagent{member}.log")),
        ));
    }
    // vmalert needs somewhere to send notifications: a sink that accepts them.
    let notifier = serve(axum::Router::new().fallback(|| async { "" })).await;
    let vmalert_port = free_port();
    procs.push(Proc::start(
        Command::new(vmalert)
            .arg(format!("-rule={}", rules.display()))
            .arg(format!("-datasource.url={vm_url}"))
            .arg(format!("-remoteWrite.url={vm_url}"))
            .arg(format!("-notifier.url={notifier}"))
            .arg("-evaluationInterval=1s")
            .arg(format!("-httpListenAddr=127.0.0.1:{vmalert_port}")),
        d.join("vmalert.log"),
    ));

    // Prometheus in agent mode writing to a receiving Prometheus that evaluates the rules.
    let recv_port = free_port();
    let recv_config = d.join("receiver.yml");
    std::fs::write(
        &recv_config,
        json!({"global": {"evaluation_interval": "1s"}, "rule_files": [rules]}).to_string(),
    )
    .unwrap();
    procs.push(Proc::start(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", recv_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                d.join("receiver").display()
            ))
            .arg("--web.enable-remote-write-receiver")
            .arg(format!("--web.listen-address=127.0.0.1:{recv_port}")),
        d.join("receiver.log"),
    ));
    let recv_url = format!("http://127.0.0.1:{recv_port}");
    let mut agent = scrape.clone();
    agent["remote_write"] = json!([{"url": format!("{recv_url}/api/v1/write")}]);
    let agent_config = d.join("agent.yml");
    std::fs::write(&agent_config, agent.to_string()).unwrap();
    let agent_port = free_port();
    procs.push(Proc::start(
        Command::new(&prometheus)
            .arg("--enable-feature=agent")
            .arg(format!("--config.file={}", agent_config.display()))
            .arg(format!(
                "--storage.agent.path={}",
                d.join("agent").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{agent_port}")),
        d.join("agent.log"),
    ));

    // Both Prometheus processes up before anything is asked of them (a bind failure shows here).
    let n = procs.len();
    wait_ready(&http, &format!("{recv_url}/-/ready"), &procs[n - 2]).await;
    wait_ready(
        &http,
        &format!("http://127.0.0.1:{agent_port}/-/ready"),
        &procs[n - 1],
    )
    .await;
    let engines = [
        Engine {
            name: "VictoriaMetrics (vmagent cluster, vmalert)",
            query: vm_url.clone(),
            alerts: format!("http://127.0.0.1:{vmalert_port}"),
        },
        Engine {
            name: "Prometheus agent -> receiving Prometheus",
            query: recv_url.clone(),
            alerts: recv_url.clone(),
        },
    ];
    let expected: BTreeSet<String> = ["OAuthRefreshTokenExpired", "OAuthTokenEndpointErrors"]
        .map(String::from)
        .into();
    let replicated = (CONNECTIONS as u32 * REPLICAS) as f64;
    for e in &engines {
        let checks: Vec<(&str, String, f64)> = vec![
            (
                "the fleet's connections, once per shard",
                "sum(job_provider_source_status:oauth_connections:sum)".into(),
                CONNECTIONS as f64,
            ),
            (
                "each connection's series once per replica (the engine's own copies deduplicated)",
                "count(oauth_refresh_token_last_refresh_timestamp_seconds)".into(),
                replicated,
            ),
            (
                "every connection exported",
                "count(count by (connection) (oauth_refresh_token_last_refresh_timestamp_seconds))"
                    .into(),
                CONNECTIONS as f64,
            ),
            (
                "the event counters, seen at 0 before the events",
                "sum(oauth_token_refresh_failures_total{error=\"server_error\"})".into(),
                0.0,
            ),
            (
                "one reader per shard's event table",
                "count(oauth_exporter_event_table_leader == 1)".into(),
                SHARDS as f64,
            ),
            (
                "every shard answering",
                "count(count by (shard) (oauth_exporter_shard_info))".into(),
                SHARDS as f64,
            ),
        ];
        for (what, q, want) in &checks {
            until(
                &format!("{}: {what} ({q} = {want})", e.name),
                Duration::from_secs(90),
                &procs,
                async || equals(e, &http, q, *want).await,
            )
            .await;
        }
    }
    // The incident: 5 server errors of two connections (the counters were scraped at 0 first,
    // so Prometheus's increase() sees them). Each shard's lease holder counts its own.
    for c in ["c3", "c3", "c3", "c7", "c7"] {
        sqlx::query(&format!("INSERT INTO {schema}.events (type, connection, outcome, error) VALUES ('refresh', '{c}', 'failure', 'server_error')"))
            .execute(&pool)
            .await
            .unwrap();
    }
    for e in &engines {
        let q = "sum(oauth_token_refresh_failures_total{error=\"server_error\"})";
        until(
            &format!(
                "{}: the 5 server errors, each counted once in the fleet",
                e.name
            ),
            Duration::from_secs(60),
            &procs,
            async || equals(e, &http, q, 5.0).await,
        )
        .await;
        let mut seen = BTreeSet::new();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(90) && seen != expected {
            seen = e.alerts(&http, false).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(seen, expected, "{}: the alerts firing", e.name);
    }
    // And it stays so: nothing else fires a while later, on either engine.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for e in &engines {
        // Not even pending: the cap alert's expression would hold on 6 copies of 20 connections
        // counted as 120, and a lease or shard alert on any gap.
        assert_eq!(
            e.alerts(&http, true).await,
            expected,
            "{}: every alert whose expression holds",
            e.name
        );
        assert_eq!(
            e.value(
                &http,
                "sum(oauth_token_refresh_failures_total{error=\"server_error\"})"
            )
            .await,
            Some(5.0),
            "{}",
            e.name
        );
    }
    drop(procs);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}
