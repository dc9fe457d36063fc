//! The `leash` command line: its arguments and the commands besides `serve`.

pub mod args;
