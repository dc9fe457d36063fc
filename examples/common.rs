//! Shared by the example agents: where the broker is and which credential to use.

/// The broker URL (`LEASH_URL`, default the quickstart's).
pub fn broker_url() -> String {
    std::env::var("LEASH_URL").unwrap_or_else(|_| "http://127.0.0.1:7070".into())
}

/// `LEASH_AGENT_CREDENTIAL`, or a fresh credential for `agent` minted with the admin
/// token (`LEASH_ADMIN_TOKEN`, or the quickstart's `./data/admin_token`).
pub async fn agent_credential(url: &str, agent: &str) -> anyhow::Result<String> {
    if let Ok(credential) = std::env::var("LEASH_AGENT_CREDENTIAL") {
        return Ok(credential);
    }
    let admin = match std::env::var("LEASH_ADMIN_TOKEN") {
        Ok(token) => token,
        Err(_) => std::fs::read_to_string("data/admin_token")
            .map_err(|e| {
                anyhow::anyhow!(
                    "set LEASH_AGENT_CREDENTIAL or LEASH_ADMIN_TOKEN (no ./data/admin_token: {e})"
                )
            })?
            .trim()
            .to_string(),
    };
    let reply: serde_json::Value = leash_sdk::tls::client_builder(&[])?
        .build()?
        .post(format!("{url}/v1/agents/{agent}/credentials"))
        .bearer_auth(admin)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    reply["credential"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("no credential in {reply}"))
}
