//! The ingest API's decoder: any body is a batch (each event accepted or rejected alone) or a
//! refusal, and no answer ever quotes a string the sender sent. Every string of the input that
//! is not a word of the schema is marked, and no rejection may contain the mark.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oauth_token_exporter::events::ingest::check_batch;
use oauth_token_exporter::provider::ProviderKind;
use serde_json::Value;

const MARK: &str = "zqxmark";
/// Words the answers may name (fields, enum values): sent as they are, they are not secrets.
const SCHEMA: &[&str] = &[
    "events", "type", "refresh", "api", "connection", "tenant", "time", "provider", "outcome",
    "success", "failure", "error", "status", "detail", "rate_limit_problem", "xero",
    "quickbooks", "sage", "microsoft", "google", "box", "custom", "invalid_grant", "network",
];

fn mark(v: &mut Value) {
    match v {
        Value::String(s) if !SCHEMA.contains(&s.as_str()) => *s = format!("{MARK}{s}"),
        Value::Array(a) => a.iter_mut().for_each(mark),
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut v) in old {
                mark(&mut v);
                let k = if SCHEMA.contains(&k.as_str()) { k } else { format!("{MARK}{k}") };
                o.insert(k, v);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes: never a panic.
    let _ = check_batch(data, ProviderKind::Xero);
    // Structured: no echo.
    let Ok(mut v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    mark(&mut v);
    let body = v.to_string();
    match check_batch(body.as_bytes(), ProviderKind::Xero) {
        Ok(rejections) => {
            for (field, error) in rejections {
                assert!(!field.contains(MARK) && !error.contains(MARK), "{field}: {error}");
            }
        }
        Err(e) => assert!(!e.contains(MARK), "{e}"),
    }
});
