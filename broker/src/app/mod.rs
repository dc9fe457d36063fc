//! Assembling and running a broker: [`start`] builds the state from the configuration,
//! [`run`] serves it. The only place that sees every handle at once.

pub mod run;
pub mod start;
pub mod state;

pub use crate::config::ServeConfig;
pub use run::{prune_revocations, run};
pub use start::prepare;
pub use state::{AppState, Handles};
