//! Biscuit tokens: minting (the only issuance Datalog), verification, the pure call
//! decision, root and forwarding keys, the revoked-id set, and sealing of stored secrets.

pub mod authorize;
pub mod keys;
pub mod mint;
pub mod revocation;
pub mod seal;
pub mod verify;
