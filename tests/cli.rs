//! The real binary: `--config.check`, flags, and graceful shutdown on SIGTERM.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_oauth-token-exporter");

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_check_accepts_a_good_file_and_exits_zero() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "ok.yml",
        "sources:\n  - {name: app, kind: sqlite, dsn: /nonexistent/app.db, preset: xero_tokens}\n",
    );
    let out = Command::new(BIN)
        .arg("--config.file")
        .arg(&p)
        .arg("--config.check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK, 1 source(s): app (sqlite)"));
}

#[test]
fn config_check_reports_every_problem_with_file_and_key_and_exits_nonzero() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "bad.yml",
        "sources:\n  - {name: a, kind: sqlite, dsn: x.db, preset: xero_tokens, colour: red}\n  - {name: b, kind: postgres, dsn_env: OTE_TEST_UNSET_VAR, preset: nango, interval: 1 fortnight}\n",
    );
    let out = Command::new(BIN)
        .arg("--config.file")
        .arg(&p)
        .arg("--config.check")
        .env_remove("OTE_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("config file {} has 2 problem(s)", p.display())),
        "{err}"
    );
    assert!(
        err.contains("sources[0].colour: unknown field `colour`"),
        "{err}"
    );
    assert!(err.contains("sources[1].interval"), "{err}");
}

#[test]
fn dsn_from_the_environment_never_appears_in_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = write(&d, "pg.yml", "sources:\n  - {name: pg, kind: postgres, dsn_env: OTE_TEST_DSN, preset: xero_tokens, timeout: 40s}\n");
    let out = Command::new(BIN)
        .arg("--config.file")
        .arg(&p)
        .arg("--config.check")
        .env(
            "OTE_TEST_DSN",
            "postgres://exporter:Canary-Pw-7731@db.invalid/app",
        )
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("sources[0].timeout"), "{all}");
    assert!(!all.contains("Canary-Pw-7731"), "{all}");
}

#[test]
fn sigterm_stops_the_exporter_gracefully_and_logs_only_to_stderr() {
    for (format, reason) in [
        ("json", "\"reason\":\"connect\""),
        ("logfmt", "reason=connect"),
    ] {
        sigterm_and_logs(format, reason);
    }
}

fn sigterm_and_logs(format: &str, reason: &str) {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "ok.yml",
        "sources:\n  - {name: app, kind: sqlite, dsn: /nonexistent/app.db, preset: xero_tokens}\n",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut child = Command::new(BIN)
        .args([
            "--config.file",
            p.to_str().unwrap(),
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--log.format",
            format,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "the exporter did not start listening");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed().as_secs() < 10,
            "no exit within 10 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("Shutting down"), "{stderr}");
    // The store is missing: the poll failed, was logged with its reason, and the process kept serving.
    assert!(stderr.contains(reason), "{format}: {stderr}");
    // Standard output stays free for a supervisor's other uses: no log line goes there.
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(stdout, "", "{format}: log lines on standard output");
}

#[test]
fn every_example_config_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir("examples").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".yml") || name == "prometheus.yml" || name == "alertmanager.yml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        oauth_token_exporter::config::parse(&text, &name, &|_| {
            Some("postgres://u@h/d-long-enough".into())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(
        n >= 4,
        "expected an example per store and preset, found {n}"
    );
}

#[test]
fn a_proxy_needs_a_listen_address_from_the_file_or_the_flag_and_config_check_lists_the_inlets() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        &d,
        "proxy.yml",
        "sources:\n  - {name: app, kind: sqlite, dsn: /nonexistent/app.db, preset: xero_tokens}\n\
         proxy:\n  source: app_proxy\n\
         ingest:\n  source: app_events\n  token_env: OTE_TEST_CLI_INGEST\n\
         persistence:\n  file: /var/lib/ote/inlets.json\n  interval: 5s\n",
    );
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .arg("--config.file")
            .arg(&p)
            .arg("--config.check")
            .args(extra)
            .env("OTE_TEST_CLI_INGEST", "0123456789abcdef0123")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("config file {} has 1 problem(s)", p.display()))
            && err.contains("proxy.listen_address: is required (or --proxy.listen-address)"),
        "{err}"
    );
    let out = run(&["--proxy.listen-address=127.0.0.1:9878"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Ingest API: POST /api/v1/events (source app_events); Reverse proxy on 127.0.0.1:9878 (source app_proxy); push-inlet counters saved to /var/lib/ote/inlets.json every 5s"),
        "{said}"
    );
}

#[test]
fn version_and_build_info_name_the_revision_and_the_rustc_that_built_it() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).to_string();
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .unwrap();
    let rustc = String::from_utf8_lossy(&rustc.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        version.starts_with(&format!(
            "oauth-token-exporter {} (revision ",
            env!("CARGO_PKG_VERSION")
        )) && version.contains(&format!(", rustc {rustc})")),
        "{version}"
    );
    // Built from a git checkout (as CI and developers do), the revision is the commit's.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Some(head) = head.ok().filter(|h| h.status.success()) {
        if std::env::var_os("OAUTH_EXPORTER_REVISION").is_none() {
            let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
            assert!(version.contains(&format!("(revision {head},")), "{version}");
        }
    }
}
