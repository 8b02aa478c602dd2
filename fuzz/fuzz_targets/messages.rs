//! Job and report messages taken from the broker: untrusted input. Any bytes decode to a message or a
//! `MessageError`, never a panic; a decoded message encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::message::{Job, Report};

fuzz_target!(|data: &[u8]| {
    if let Ok(job) = Job::from_json(data) {
        let again = Job::from_json(&job.to_json()).expect("a job this code encoded decodes");
        assert_eq!(again.job_id, job.job_id);
    }
    if let Ok(report) = Report::from_json(data) {
        let again = Report::from_json(&report.to_json()).expect("a report this code encoded decodes");
        assert_eq!(again.job_id, report.job_id);
    }
});
