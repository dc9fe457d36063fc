//! Replicas sharing one PostgreSQL deployment: the change feed each one applies to
//! its caches, its proven health, and the root keys sealed in the database.

pub mod feed;
pub mod health;
pub mod sealed_keys;
