//! People: local accounts and the web sessions of those who signed in.
//!
//! - [`oidc`]: signing in through the deployment's OpenID provider;
//! - [`passwords`]: local accounts (`leash users add`), Argon2id, and checking a
//!   password with throttling per account and per address;
//! - [`sessions`]: the browser session a sign-in starts — a cookie naming a stored,
//!   expiring session, with the CSRF token every form of it carries.

pub mod oidc;
pub mod passwords;
pub mod sessions;
