//! Paging and delta links (`@odata.nextLink`, `@odata.deltaLink`, and links kept in the producer's state file):
//! any text is refused or accepted, never a panic, and an accepted link always points at the tenant's own Graph
//! host, so a token is never sent elsewhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::graph::parsers::same_origin_url;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let base = Url::parse("https://graph.microsoft.com/v1.0/").expect("a fixed URL");
    if let Ok(url) = same_origin_url(&base, "delta link", &text) {
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.host_str(), Some("graph.microsoft.com"));
        assert_eq!(url.port_or_known_default(), Some(443));
    }
});
