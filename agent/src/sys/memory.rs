//! The allocator's share of the agent's footprint.

/// glibc's malloc arenas the agent may use. glibc's default is 8 per CPU,
/// one more for each thread that allocates while the others are busy: the
/// tokio workers and the blocking threads of SQLite and file work each end up
/// with an arena of their own, which keeps its freed memory. Two arenas hold
/// the agent's peak at a throughput burst about 3 MiB lower (BENCHMARKS.md).
pub const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`] unless the operator set
/// `MALLOC_ARENA_MAX` (glibc then reads it itself). Call it first thing in
/// `main`, before threads start. Returns whether the cap was set by this call.
pub fn limit_malloc_arenas() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    set_arena_max(MALLOC_ARENAS)
}

#[cfg(target_env = "gnu")]
fn set_arena_max(n: i32) -> bool {
    // SAFETY: mallopt takes two integers and changes glibc's allocator settings;
    // M_ARENA_MAX only bounds arenas created from now on.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

#[cfg(not(target_env = "gnu"))]
fn set_arena_max(_: i32) -> bool {
    false
}

#[cfg(all(test, target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_takes_the_arena_cap() {
        assert!(super::set_arena_max(super::MALLOC_ARENAS), "mallopt(M_ARENA_MAX) was refused");
    }
}
