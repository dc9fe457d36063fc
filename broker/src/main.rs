//! The `leash` binary: one line calling the library ([`leash_broker::cli::main`]), and
//! the process's allocator (mimalloc: see BENCHMARKS.md for why).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Memory over a few percent of speed: freed memory goes back to the system at once
    // (purge delay 0, arenas committed on use). At 100,000 tasks and 1,000,000 revoked
    // ids (scripts/scale-rss.py): peak RSS 101–112 MiB with these, 124.5 MiB without,
    // 98.6 MiB with glibc's malloc; throughput 1.25x glibc's with, 1.43x without.
    // SAFETY: plain option setters of the allocator, called before any thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
    leash_broker::cli::main()
}

// `mi_option_e` of `mimalloc.h` (the same values in mimalloc v2 and v3, which
// libmimalloc-sys 0.1 builds without its `v2` feature).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
