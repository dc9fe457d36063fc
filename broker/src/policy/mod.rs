//! Policy: which tools exist, and what each agent may be granted.
//!
//! Loaded once at start from every `*.toml` in the policy folder ([`load_dir`]) and
//! immutable afterwards. Everything here is already validated: schemas compiled,
//! Datalog checks parsed, environment references substituted.

mod fields;
pub mod input_schema;
mod load;
mod model;
mod providers;
mod sections;
mod toml_value;
pub mod write_only;

pub use load::{load_dir, load_sources};
pub use model::*;
