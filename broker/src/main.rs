//! The `leash` binary: one line calling the library ([`leash_broker::cli::main`]), and
//! the process's allocator (mimalloc: see BENCHMARKS.md for why).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    leash_broker::cli::main()
}
