//! The configuration document an operator writes (`AUTOMATION_SYNCCONTACTS_CONFIG_JSON`): any text gives settings
//! or a `ConfigError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::config::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(document) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON" => Some(document.to_owned()),
        _ => None,
    };
    if let Err(error) = Settings::from_sources(&env, None) {
        // Rendering the error must not panic either (it is what the operator reads).
        let _ = error.to_string();
    }
});
