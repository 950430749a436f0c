//! Every timestamp shape the stores use: any cell either parses to a plausible time (2000 to
//! 2200) or is refused, in every format.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oauth_token_exporter::timestamp::{to_time, Cell, TimeFormat};

const FORMATS: [TimeFormat; 6] = [
    TimeFormat::Auto,
    TimeFormat::EpochSeconds,
    TimeFormat::EpochMillis,
    TimeFormat::Rfc3339,
    TimeFormat::NaiveUtc,
    TimeFormat::RelativeSeconds,
];

fn check(cell: &Cell) {
    for f in FORMATS {
        if let Ok(Some(t)) = to_time(cell, f) {
            let year = chrono::Datelike::year(&t);
            assert!((2000..=2200).contains(&year), "{cell:?} {f:?} -> {t}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(&Cell::Text(s.to_string()));
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
            check(&Cell::from_json(&v));
        }
    }
    if data.len() >= 8 {
        let i = i64::from_le_bytes(data[..8].try_into().unwrap());
        check(&Cell::Int(i));
        check(&Cell::Float(f64::from_bits(i as u64)));
    }
});
