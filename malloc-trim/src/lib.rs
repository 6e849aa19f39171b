//! Hands the C allocator's whole free pages back to the kernel.
//!
//! glibc's malloc keeps what a program frees in its per-thread arenas and
//! only ever returns the top of each heap, so a long-running proxy's resident
//! memory stays at its high-water mark after load leaves (see the proxy's
//! `src/memory.rs` and "Memory under churn" in `docs/benchmarks.md`).
//! `malloc_trim(0)` walks every arena and releases each whole free page.
//!
//! This is the proxy's one call into C. It lives in its own crate so that
//! the proxy and every other crate of the workspace can forbid unsafe code.

#![deny(unsafe_code)]

/// Returns the allocator's whole free pages to the kernel; true when any
/// were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own free
    // lists, under the arena locks every malloc and free also take; it is
    // safe to call from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0) == 1
    }
}

/// Returns the allocator's whole free pages to the kernel; without glibc
/// there is no `malloc_trim`, so nothing is done.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_never_fails_and_can_run_at_any_time() {
        let garbage: Vec<Vec<u8>> = (0..1000).map(|n| vec![0u8; 1024 + n]).collect();
        drop(garbage);
        // Whether pages were released depends on the heap; it must not crash.
        let _ = super::trim();
        let _ = super::trim();
    }
}
