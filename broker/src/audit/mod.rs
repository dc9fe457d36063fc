//! The audit trail: the batched hash-chained log writer and its signed checkpoints.

pub mod checkpoint;
pub mod evidence;
pub mod log;
