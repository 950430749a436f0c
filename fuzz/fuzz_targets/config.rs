//! The YAML config parser and the web config parser: any input is a config or a list of
//! problems, never a panic, a hang or unbounded memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| Some("0123456789abcdef0123".to_string());
    if let Err(e) = oauth_token_exporter::config::parse(text, "fuzz.yml", &env) {
        // Every refusal names the file.
        assert!(e.to_string().contains("fuzz.yml"));
    }
    let _ = oauth_token_exporter::http::web_config::parse(
        text,
        std::path::Path::new("/nonexistent"),
        "web.yml",
    );
});
