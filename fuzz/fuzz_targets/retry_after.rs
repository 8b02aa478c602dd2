//! `Retry-After` as Graph (or anything between) sends it: any text gives a bounded wait or none, never a panic,
//! and the wait can always be added to the present moment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::graph::parsers::parse_retry_after;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(wait) = parse_retry_after(&text, chrono::Utc::now()) {
        // The parser caps every wait at one day (retry.rs, RETRY_AFTER_CEILING).
        assert!(wait <= std::time::Duration::from_secs(86_400), "uncapped wait {wait:?}");
        assert!(
            std::time::Instant::now().checked_add(wait).is_some(),
            "a parsed wait must fit an Instant: {wait:?}"
        );
    }
});
