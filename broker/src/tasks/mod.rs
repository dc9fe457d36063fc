//! The task domain: live task state and counters, the checked call, issuance of task
//! tokens, and the approvals humans decide.

pub mod approvals;
pub mod calls;
pub mod credentials;
pub mod history;
pub mod issue;
pub mod lifecycle;
pub mod live;
pub mod mints;
pub mod runtime;
pub mod services;
#[cfg(test)]
pub(crate) mod testkit;
