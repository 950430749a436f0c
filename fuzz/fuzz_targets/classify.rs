//! The classifiers of Xero's answers: any status, body and header lands in a closed enum.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oauth_token_exporter::events::classify::{classify_api, rate_limit_problem, unauthorized_reason};
use oauth_token_exporter::provider::classify_refresh_error;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let body = &data[2..];
    let _ = classify_refresh_error(status, body);
    let text = String::from_utf8_lossy(body);
    let _ = classify_api(status, body, Some(&text));
    let _ = unauthorized_reason(&text).as_str();
    let _ = rate_limit_problem(Some(&text)).as_str();
});
