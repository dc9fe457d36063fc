//! The `leash` binary: one line calling the library ([`leash_broker::cli::main`]).

fn main() -> std::process::ExitCode {
    leash_broker::cli::main()
}
