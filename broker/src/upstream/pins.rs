//! Tool pinning (the rug-pull guard): the first time Leash sees an upstream tool it
//! records a hash of its name, description and input schema. A later, different
//! definition is withheld — not listed, not callable — until an approver accepts it.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use async_trait::async_trait;

use crate::error::ApiError;
use crate::store::{Store, ToolPin};
use crate::upstream::catalog::Catalog;

/// Who decides whether a changed definition may be used: files a request for a human
/// and returns its id. Implemented by the approvals service above this layer, so that
/// upstream discovery does not depend on it.
#[async_trait]
pub trait DefinitionReview: Send + Sync {
    /// Files a review of `tool`'s new `definition` (`hash`) on `server`; its id.
    async fn file(
        &self,
        server: &str,
        tool: &str,
        definition: &Value,
        hash: &str,
    ) -> Result<String, ApiError>;
}

/// The definition that is pinned, and its hash.
pub fn definition(name: &str, description: &str, input_schema: &Value) -> (Value, String) {
    let definition =
        json!({ "name": name, "description": description, "input_schema": input_schema });
    let hash = hex::encode(Sha256::digest(definition.to_string().as_bytes()));
    (definition, hash)
}

/// A changed definition to put before an approver: filed ([`file`]) once the catalog
/// withholds it, so an approver never sees a review of a definition still being served.
pub struct Review {
    server: String,
    pin: ToolPin,
    definition: Value,
    hash: String,
}

/// Whether the definition must be withheld, and whether an approver must be asked (once
/// a change is seen; not again while that is pending). `keys` is its pin's key (server,
/// kind and the server's own name) and, for a tool pinned before pins were keyed so, the
/// key it had then (its exposed name), whose pin is adopted. Pins a first sight.
pub async fn judge(
    store: &dyn Store,
    server: &str,
    keys: (&str, Option<&str>),
    definition: &Value,
    hash: &str,
) -> Result<(bool, Option<Review>), ApiError> {
    let (name, legacy) = keys;
    let mut pin = store.get_pin(name).await.map_err(ApiError::internal)?;
    if pin.is_none()
        && let Some(legacy) = legacy
        && let Some(old) = store.get_pin(legacy).await.map_err(ApiError::internal)?
    {
        // The accepted definition only: a review pending under the old key is filed again
        // under this one (its approval would name the old key).
        let adopted = ToolPin {
            name: name.to_string(),
            hash: old.hash,
            pending_hash: None,
            approval_id: None,
        };
        store.put_pin(&adopted).await.map_err(ApiError::internal)?;
        pin = Some(adopted);
    }
    let Some(pin) = pin else {
        let first = ToolPin {
            name: name.to_string(),
            hash: hash.to_string(),
            pending_hash: None,
            approval_id: None,
        };
        store.put_pin(&first).await.map_err(ApiError::internal)?;
        return Ok((false, None));
    };
    if pin.hash == hash {
        return Ok((false, None));
    }
    // Asked once per definition: pending, or denied/expired (then it stays withheld until
    // the upstream changes it again) — never refiled on every refresh.
    let asked = matches!((&pin.pending_hash, &pin.approval_id), (Some(pending), Some(_)) if pending == hash);
    let review = (!asked).then(|| Review {
        server: server.to_string(),
        pin,
        definition: definition.clone(),
        hash: hash.to_string(),
    });
    Ok((true, review))
}

/// Files `pending` with `review` and records it on the pin.
pub async fn file(
    store: &dyn Store,
    review: &dyn DefinitionReview,
    pending: Review,
) -> Result<(), ApiError> {
    let Review {
        server,
        mut pin,
        definition,
        hash,
    } = pending;
    let approval_id = review.file(&server, &pin.name, &definition, &hash).await?;
    pin.pending_hash = Some(hash);
    pin.approval_id = Some(approval_id);
    store.put_pin(&pin).await.map_err(ApiError::internal)?;
    tracing::warn!(
        tool = pin.name,
        "an upstream tool definition changed; withheld until an approver accepts it"
    );
    Ok(())
}

/// [`judge`], filing the review at once (where nothing is published in between).
pub async fn withheld(
    store: &dyn Store,
    review: &dyn DefinitionReview,
    server: &str,
    keys: (&str, Option<&str>),
    definition: &Value,
    hash: &str,
) -> Result<bool, ApiError> {
    let (withheld, pending) = judge(store, server, keys, definition, hash).await?;
    if let Some(pending) = pending {
        file(store, review, pending).await?;
    }
    Ok(withheld)
}

/// Accepts the definition an approved approval names, and releases the tool.
pub async fn accept(
    store: &dyn Store,
    catalog: &Catalog,
    name: &str,
    hash: &str,
) -> Result<(), ApiError> {
    let pin = ToolPin {
        name: name.to_string(),
        hash: hash.to_string(),
        pending_hash: None,
        approval_id: None,
    };
    store.put_pin(&pin).await.map_err(ApiError::internal)?;
    catalog.release(name, hash);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{accept, definition, withheld};
    use crate::store::ApprovalState;
    use crate::tasks::testkit::{Kit, notes_policy};

    #[test]
    fn a_definition_hash_covers_name_description_and_schema() {
        let schema = json!({"type": "object"});
        let (_, hash) = definition("docs.search", "Search", &schema);
        assert_eq!(hash, definition("docs.search", "Search", &schema).1);
        assert_ne!(
            hash,
            definition("docs.search", "Search and delete", &schema).1
        );
        assert_ne!(hash, definition("docs.find", "Search", &schema).1);
        assert_ne!(
            hash,
            definition(
                "docs.search",
                "Search",
                &json!({"type": "object", "required": ["q"]})
            )
            .1
        );
    }

    #[tokio::test]
    async fn a_changed_definition_is_withheld_and_asked_about_once_until_accepted() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let store = kit.store.as_ref();
        let review = kit.approvals.as_ref();
        let first = definition("docs.search", "Search", &json!({}));
        let changed = definition("docs.search", "Search and delete", &json!({}));
        // First sight pins; the same definition again is fine.
        assert!(
            !withheld(
                store,
                review,
                "docs",
                ("docs/tool/search", None),
                &first.0,
                &first.1
            )
            .await
            .unwrap()
        );
        assert!(
            !withheld(
                store,
                review,
                "docs",
                ("docs/tool/search", None),
                &first.0,
                &first.1
            )
            .await
            .unwrap()
        );
        // A change is withheld, and asked about once however often it is seen.
        for _ in 0..3 {
            assert!(
                withheld(
                    store,
                    review,
                    "docs",
                    ("docs/tool/search", None),
                    &changed.0,
                    &changed.1
                )
                .await
                .unwrap()
            );
        }
        let pending = store
            .list_approvals(Some(ApprovalState::Pending), 10)
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].args_hash.as_deref(), Some(changed.1.as_str()));
        // Accepting it releases the tool with the new definition.
        let catalog = crate::upstream::catalog::Catalog::new(&kit.policy);
        accept(store, &catalog, "docs/tool/search", &changed.1)
            .await
            .unwrap();
        assert!(
            !withheld(
                store,
                review,
                "docs",
                ("docs/tool/search", None),
                &changed.0,
                &changed.1
            )
            .await
            .unwrap()
        );
        let pin = store.get_pin("docs/tool/search").await.unwrap().unwrap();
        assert_eq!(
            (pin.hash.as_str(), pin.pending_hash),
            (changed.1.as_str(), None)
        );
    }

    /// A tool pinned under its exposed name (before pins were keyed by server and the
    /// server's own name) keeps its pin: adopted under the new key, so an unchanged tool
    /// stays released and a changed one is withheld, never trusted again on first sight.
    #[tokio::test]
    async fn a_pin_under_the_old_key_is_adopted_not_forgotten() {
        let kit = Kit::new(&notes_policy("http://127.0.0.1:9")).await;
        let store = kit.store.as_ref();
        let review = kit.approvals.as_ref();
        let first = definition("docs.search", "Search", &json!({}));
        let changed = definition("docs.search", "Search and exfiltrate", &json!({}));
        let old = crate::store::ToolPin {
            name: "docs.search".into(),
            hash: first.1.clone(),
            pending_hash: None,
            approval_id: None,
        };
        store.put_pin(&old).await.unwrap();
        let keys = ("docs/tool/search", Some("docs.search"));
        assert!(
            !withheld(store, review, "docs", keys, &first.0, &first.1)
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .get_pin("docs/tool/search")
                .await
                .unwrap()
                .unwrap()
                .hash,
            first.1
        );
        // A changed definition is withheld under the adopted pin.
        let other = crate::store::ToolPin {
            name: "other.search".into(),
            ..old
        };
        store.put_pin(&other).await.unwrap();
        let keys = ("other/tool/search", Some("other.search"));
        assert!(
            withheld(store, review, "other", keys, &changed.0, &changed.1)
                .await
                .unwrap()
        );
        // The same tool exposed under another name (prefix flipped) keeps its key, and
        // its changed name is a changed definition: withheld until approved.
        let flipped = definition("search", "Search", &json!({}));
        let keys = ("docs/tool/search", Some("search"));
        assert!(
            withheld(store, review, "docs", keys, &flipped.0, &flipped.1)
                .await
                .unwrap()
        );
    }
}
