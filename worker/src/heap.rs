//! Keeping the process's resident memory close to what it holds (issue 10, scenario 10: bounded memory).
//!
//! glibc's allocator gives each thread that contends for it an arena of its own (up to 8 per core) and keeps what
//! is freed for reuse inside that arena. A job's future moves between the runtime's threads, so a large plan freed
//! in one arena was not reused by the next job's plan in another, and the worker's peak resident memory grew to
//! the sum of what each arena once held (measured: 707 MiB for about 380 MiB live in the 100,000-contact bench).
//! Two arenas, and freed pages handed back to the system once a large folder's planning state is dropped, keep
//! the peak near what is live. A no-op on other allocators.

/// Contacts from which a job's freed planning state is handed back at once (smaller jobs free too little to
/// matter, and trimming has a cost).
pub const LARGE: usize = 10_000;

/// Allocator arenas at most: contention is low (jobs mostly wait on Graph), memory matters more.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Allocations from this size are mapped on their own and unmapped when freed (glibc's initial threshold, kept
/// fixed). glibc otherwise raises the threshold to each large block freed (up to 32 MiB), so a page body or a
/// growing `Vec` of contacts lands inside the heap, and the hole it leaves is pinned by the small strings
/// allocated after it: resident memory no trim can hand back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_FROM: libc::c_int = 128 * 1024;

/// Limits the allocator's arenas and keeps large blocks out of its heap; call first thing in `main`.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets tuning parameters of glibc's allocator; any positive value is valid for both.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM);
    }
}

/// Hands the allocator's free pages back to the system (after a large folder's planning state was dropped).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory to the system; it never touches memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failed before the fixed threshold: once a large block was freed, glibc raised its threshold to that size,
    /// and the next large block (a page body, a growing list of contacts) was placed inside the heap, not mapped.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn large_blocks_stay_mapped_after_a_large_block_was_freed() {
        limit_arenas();
        drop(std::hint::black_box(vec![1u8; 4 << 20]));
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
        let before = mapped();
        let block = std::hint::black_box(vec![1u8; 1 << 20]);
        let after = mapped();
        drop(block);
        assert!(
            after >= before + (1 << 20),
            "a 1 MiB block after a 4 MiB one was freed is not mapped on its own ({before} -> {after} bytes mapped)"
        );
    }

    /// Both are safe to call at any time, any number of times, with memory in use.
    #[test]
    fn limiting_and_releasing_keep_memory_in_use_intact() {
        let kept: Vec<String> = (0..10_000).map(|i| format!("contact {i}")).collect();
        limit_arenas();
        let freed: Vec<String> = (0..100_000).map(|i| format!("freed {i}")).collect();
        drop(freed);
        release_freed();
        release_freed();
        assert_eq!(kept[9_999], "contact 9999");
        assert_eq!(kept.len(), 10_000);
    }
}
