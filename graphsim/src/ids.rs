//! Outlook-style opaque identifiers, change keys and server timestamps.
//!
//! Graph's Outlook ids are standard base64 (they contain `/`, `+` and `=`), so clients that forget to
//! URL-encode path segments fail here as they would against Graph. A string that does not decode to the
//! simulator's id layout is "malformed" (400); a well-formed id that names nothing is "not found" (404).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

/// Prefix of contact ids (as in Graph's `AAMkAG...`).
pub const CONTACT_PREFIX: &str = "AAMkAG";
/// Prefix of folder ids (as in Graph's `AQMkAD...`).
pub const FOLDER_PREFIX: &str = "AQMkAD";
const PAYLOAD: usize = 50;

fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; PAYLOAD];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", STANDARD.encode(bytes))
}

/// A new contact id.
pub fn contact_id() -> String {
    new_id(CONTACT_PREFIX)
}

/// A new folder id.
pub fn folder_id() -> String {
    new_id(FOLDER_PREFIX)
}

/// Whether `id` has the layout of an id with `prefix` (true) or is malformed (false).
pub fn well_formed(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| STANDARD.decode(rest).ok())
        .is_some_and(|bytes| bytes.len() == PAYLOAD)
}

/// A new change key (base64 of 30 random bytes, like `EQAAABYAAACv7At+...`).
pub fn change_key() -> String {
    let mut bytes = [0u8; 30];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = 0x11;
    STANDARD.encode(bytes)
}

/// Strictly increasing UTC timestamps with microsecond precision.
#[derive(Debug, Default)]
pub struct Clock {
    last_micros: i64,
}

impl Clock {
    /// The next timestamp: now, or one microsecond after the previous one if the clock has not moved.
    pub fn next(&mut self) -> String {
        let now = chrono::Utc::now().timestamp_micros();
        let micros = now.max(self.last_micros + 1);
        self.last_micros = micros;
        chrono::DateTime::from_timestamp_micros(micros)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_garbage_is_not() {
        let id = contact_id();
        assert!(well_formed(&id, CONTACT_PREFIX));
        assert!(!well_formed(&id, FOLDER_PREFIX));
        assert!(!well_formed("AAMkAGnope", CONTACT_PREFIX));
        assert!(!well_formed("", CONTACT_PREFIX));
    }

    #[test]
    fn clock_strictly_increases() {
        let mut clock = Clock::default();
        let a = clock.next();
        let b = clock.next();
        assert!(b > a, "{b} > {a}");
    }
}
