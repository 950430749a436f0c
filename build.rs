//! Build facts for `oauth_exporter_build_info` and `--version`: the git revision (when built
//! from a checkout; `OAUTH_EXPORTER_REVISION` set by a packager wins) and the rustc version.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=OAUTH_EXPORTER_REVISION");
    let revision = std::env::var("OAUTH_EXPORTER_REVISION")
        .ok()
        .or_else(|| output("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // A new commit changes the revision: watch what HEAD points at.
    // (Only files that exist: a missing one would rerun this script at every build.)
    if let Some(git_dir) = output("git", &["rev-parse", "--git-dir"]) {
        let mut watched = vec![format!("{git_dir}/HEAD"), format!("{git_dir}/packed-refs")];
        if let Some(head_ref) = output("git", &["symbolic-ref", "-q", "HEAD"]) {
            watched.push(format!("{git_dir}/{head_ref}"));
        }
        for f in watched.iter().filter(|f| std::path::Path::new(f).exists()) {
            println!("cargo:rerun-if-changed={f}");
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
    // `rustc 1.95.0 (59807616e 2026-04-14)` -> `1.95.0`.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustversion = output(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OAUTH_EXPORTER_REVISION={revision}");
    println!("cargo:rustc-env=OAUTH_EXPORTER_RUSTC={rustversion}");
}
