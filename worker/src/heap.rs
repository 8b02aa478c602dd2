//! Keeping the process's resident memory close to what it holds (issue 10, scenario 10: bounded memory).
//!
//! Both binaries run jobs (the worker, and the producer in its embedded default), and a job planning a large
//! folder allocates and frees hundreds of megabytes of small strings. glibc's allocator kept what was freed: a
//! freed page stayed resident while one small string on it lived, and each arena kept its own free lists, so the
//! worker's peak resident memory depended on how jobs interleaved (454-587 MiB for the same run of the
//! 100,000-contact benchmark, with arenas limited, large blocks mapped on their own and `malloc_trim` after each
//! large plan). jemalloc groups allocations by size class and hands a page back once it is free; with the options
//! below the peak stays near what is live.
//!
//! Install it in a binary with `#[global_allocator] static ALLOCATOR: worker::heap::Allocator =
//! worker::heap::Allocator;`.

use std::ffi::c_char;

/// The allocator of both binaries.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// jemalloc's options, read at its first allocation (before `main`):
/// - `narenas:1`: one arena. A job's future moves between the runtime's threads; with an arena per thread, what one
///   job freed in one arena was not reused by the next job planning in another. Contention is low (jobs mostly
///   wait on Graph).
/// - `background_thread:true`: freed pages are handed back by jemalloc's own thread, also while jobs wait.
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: a freed page is kept for reuse for about a second, then handed back
///   (jemalloc's default keeps it for 10 s, long enough for a second large plan to start beside it).
const OPTIONS: &std::ffi::CStr =
    c"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

/// The symbol jemalloc reads its compiled-in options from (`malloc_conf`, prefixed as tikv-jemalloc-sys builds it).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static c_char> = Some(
    // SAFETY: `OPTIONS` is a static, NUL-terminated string; jemalloc only reads it.
    unsafe { &*OPTIONS.as_ptr() },
);

/// Contacts from which a job's freed planning state is handed back at once (smaller jobs free too little to
/// matter, and purging has a cost).
pub const LARGE: usize = 10_000;

/// Hands the allocator's free pages back to the system at once (after a large folder's planning state was
/// dropped), rather than within the decay time: the next large plan may start at once.
pub fn release_freed() {
    // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena's unused dirty pages.
    const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: a purge takes no value and returns none (every pointer null, lengths zero); it only hands unused
    // pages back to the system. Its status is ignored: a purge that failed leaves the pages to the decay.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: Allocator = Allocator;

    /// Fails if jemalloc did not pick the options up (a misspelt symbol leaves its defaults: 4 arenas per core).
    #[test]
    fn jemalloc_runs_with_the_options() {
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().ok(), Some(1));
        assert_eq!(
            tikv_jemalloc_ctl::opt::background_thread::read().ok(),
            Some(true)
        );
    }

    /// Freed pages go back to the system: resident memory falls once a large allocation is freed and purged. The
    /// count is the process's, and the other tests of this crate allocate and free beside it (pages they freed may
    /// hold part of this allocation), so the allocation is large (about 60 MiB) and at least 32 MiB must go back.
    #[test]
    fn freed_memory_is_handed_back() {
        let resident = || {
            tikv_jemalloc_ctl::epoch::advance().ok();
            tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0)
        };
        let before = resident();
        let strings: Vec<String> = (0..1_000_000)
            .map(|i| format!("contact number {i}"))
            .collect();
        let held = resident();
        drop(std::hint::black_box(strings));
        release_freed();
        let after = resident();
        assert!(
            held.saturating_sub(after) > 32 << 20,
            "1,000,000 freed strings were not handed back: {before} bytes resident first, {held} with them, {after} \
             after"
        );
    }

    /// Safe to call at any time, any number of times, with memory in use.
    #[test]
    fn releasing_keeps_memory_in_use_intact() {
        let kept: Vec<String> = (0..10_000).map(|i| format!("contact {i}")).collect();
        let freed: Vec<String> = (0..100_000).map(|i| format!("freed {i}")).collect();
        drop(freed);
        release_freed();
        release_freed();
        assert_eq!(kept[9_999], "contact 9999");
        assert_eq!(kept.len(), 10_000);
    }
}
