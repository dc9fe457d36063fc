//! Approval and task events: the in-process hub (event stream, long-polls) and the
//! signed webhook that carries them out.

pub mod hub;
pub mod webhook;
