//! Calls in rounds (2026-07-28 `input_required`): an MCP upstream may answer a stateless
//! client's call with questions for that client (sampling, elicitation, roots) and a
//! `requestState`; the client answers them by making the same call again with its
//! `inputResponses` and that state.
//!
//! Leash never hands the upstream's state to the client: it gives its own, sealed with
//! the deployment's at-rest key (AEAD, so the client can neither read nor alter it) and
//! bound to the task, the presented token, the name, the kind of use and the arguments —
//! so a state opens only for the same call by the same token, on any replica (they share
//! the key). The sealed state also names the questions asked (answers to others are
//! refused), the round's number (at most [`MAX_ROUNDS`]) and its end ([`ROUND_TIME`]).
//!
//! Each round is a checked call of its own (token, task state, checks, schema, budget,
//! per-call approval, audit, counting): every round runs upstream code, and a state can
//! be presented again (nothing here is single-use), so no round may be free.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{ClientCapabilities, InputRequiredResult, InputResponses};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::tokens::seal::Sealer;
use crate::upstream::mcp::InputRound;

/// Most rounds one call may take (the official SDKs' own default cap).
pub const MAX_ROUNDS: u32 = 10;

/// How long a client has to answer one round's questions.
pub const ROUND_TIME: Duration = Duration::from_secs(600);

/// The kind of a sealed round state (its owner is the call it belongs to).
const ROUND_STATE: &str = "MCP request state";

/// The call a round belongs to: a state opens only for the very same one.
pub struct CallId<'a> {
    /// The task.
    pub task: &'a str,
    /// The presented token's own id (a sub-agent's attenuated token is not its parent's).
    pub token: &'a str,
    /// `tool`, `prompt` or `resource`.
    pub kind: &'static str,
    /// The name as the client used it.
    pub name: &'a str,
    /// The arguments (for a read, `{"uri": …}`).
    pub args: &'a Value,
}

impl CallId<'_> {
    /// The associated data of its sealed states.
    fn owner(&self) -> String {
        let mut args = self.args.clone();
        leash_sdk::facts::normalize_numbers(&mut args);
        // Object keys are ordered (serde_json without `preserve_order`): one text per value.
        let digest = hex::encode(Sha256::digest(args.to_string().as_bytes()));
        format!(
            "{}\n{}\n{}\n{}\n{digest}",
            self.task, self.token, self.kind, self.name
        )
    }
}

/// What Leash's sealed state holds.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// The upstream's own `requestState`, if it gave one.
    state: Option<String>,
    /// The keys of the questions the client was asked.
    asked: Vec<String>,
    /// The number of the round the client answers for (the next one).
    round: u32,
    /// When the answer is too late (ms since the epoch).
    until_ms: i64,
    /// The `Leash-Approval` presented with the round that asked (spent, if the use needs
    /// one per call).
    #[serde(default)]
    approval: Option<String>,
}

/// Seals and opens round states.
pub struct Rounds {
    sealer: Arc<Sealer>,
    clock: Clock,
}

impl Rounds {
    /// Round states sealed by `sealer`, timed by `clock`.
    pub fn new(sealer: Arc<Sealer>, clock: Clock) -> Rounds {
        Rounds { sealer, clock }
    }

    /// The round a stateless client's request makes of `call`: the first without a
    /// state; else the one its sealed state names, with the upstream's state unsealed.
    /// A state of another call, altered, expired or past the last round, and answers
    /// to questions not asked (or without a state) are `bad_request`.
    pub fn round(
        &self,
        call: &CallId,
        capabilities: ClientCapabilities,
        state: Option<&str>,
        responses: Option<InputResponses>,
    ) -> Result<InputRound, ApiError> {
        let Some(state) = state else {
            if responses.is_some() {
                return Err(ApiError::BadRequest(
                    "inputResponses come with the requestState Leash gave with the questions"
                        .into(),
                ));
            }
            return Ok(InputRound {
                number: 1,
                capabilities,
                ..InputRound::default()
            });
        };
        let opened = self
            .sealer
            .open(ROUND_STATE, &call.owner(), state)
            .ok()
            .and_then(|text| serde_json::from_str::<Sealed>(&text).ok())
            .ok_or_else(|| {
                ApiError::BadRequest(
                    "the requestState is not one Leash gave for this call (the same task, token, name and arguments), or it was altered"
                        .into(),
                )
            })?;
        if self.clock.now_ms() > opened.until_ms {
            return Err(ApiError::BadRequest(format!(
                "the requestState expired (a round's questions must be answered within {} s): make the call again without it",
                ROUND_TIME.as_secs()
            )));
        }
        if let Some(key) = responses
            .iter()
            .flat_map(|r| r.keys())
            .find(|key| !opened.asked.contains(key))
        {
            return Err(ApiError::BadRequest(format!(
                "inputResponses answers {key:?}, which this round did not ask"
            )));
        }
        Ok(InputRound {
            number: opened.round,
            capabilities,
            responses,
            state: opened.state,
            spent_approval: opened.approval,
        })
    }

    /// What the client gets when the upstream asked during `round` of `call`: the same
    /// questions, with Leash's sealed state for the next round in place of the
    /// upstream's (`approval` is the `Leash-Approval` this round presented). Past
    /// [`MAX_ROUNDS`], the call fails instead.
    pub fn ask(
        &self,
        call: &CallId,
        round: &InputRound,
        asks: InputRequiredResult,
        approval: Option<&str>,
    ) -> Result<InputRequiredResult, ApiError> {
        if round.number >= MAX_ROUNDS {
            return Err(ApiError::UpstreamError(format!(
                "{} {:?} still asked for input after {MAX_ROUNDS} rounds; Leash ends the call there",
                call.kind, call.name
            )));
        }
        let sealed = Sealed {
            state: asks.request_state,
            asked: asks
                .input_requests
                .iter()
                .flat_map(|q| q.keys().cloned())
                .collect(),
            round: round.number + 1,
            until_ms: self.clock.now_ms() + ROUND_TIME.as_millis() as i64,
            approval: approval.map(str::to_string),
        };
        let text = serde_json::to_string(&sealed).map_err(ApiError::internal)?;
        let state = self.sealer.seal(ROUND_STATE, &call.owner(), &text);
        Ok(InputRequiredResult::new(asks.input_requests, Some(state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rounds() -> Rounds {
        Rounds::new(Arc::new(Sealer::new([9; 32])), Clock::fixed(1_000_000))
    }

    fn asks(state: &str) -> InputRequiredResult {
        let question = serde_json::from_value(json!({
            "method": "roots/list", "params": {}
        }))
        .unwrap();
        InputRequiredResult::new(
            Some([("where".to_string(), question)].into()),
            Some(state.into()),
        )
    }

    fn call<'a>(token: &'a str, args: &'a Value) -> CallId<'a> {
        CallId {
            task: "t1",
            token,
            kind: "tool",
            name: "everything.greet",
            args,
        }
    }

    /// The state a client gets when the first round of `tok`'s call with `args` asked.
    fn first_state(rounds: &Rounds, args: &Value) -> String {
        let first = rounds
            .round(
                &call("tok", args),
                ClientCapabilities::default(),
                None,
                None,
            )
            .unwrap();
        let asked = rounds
            .ask(&call("tok", args), &first, asks("s"), None)
            .unwrap();
        asked.request_state.unwrap()
    }

    #[test]
    fn a_round_state_opens_only_for_its_own_call_and_hides_the_upstreams() {
        let rounds = rounds();
        let args = json!({"a": 1, "b": [true]});
        let first = rounds
            .round(
                &call("tok", &args),
                ClientCapabilities::default(),
                None,
                None,
            )
            .unwrap();
        assert_eq!(first.number, 1);
        let given = rounds
            .ask(
                &call("tok", &args),
                &first,
                asks("upstream-secret-state"),
                None,
            )
            .unwrap();
        let state = given.request_state.clone().unwrap();
        assert!(!state.contains("upstream-secret-state"), "{state}");
        assert_eq!(given.input_requests.as_ref().unwrap().len(), 1);
        let answers: InputResponses = [("where".to_string(), json!({"roots": []}))].into();
        // The same call, its keys in another order, opens it.
        let same = json!({"b": [true], "a": 1.0});
        let next = rounds
            .round(
                &call("tok", &same),
                ClientCapabilities::default(),
                Some(&state),
                Some(answers.clone()),
            )
            .unwrap();
        assert_eq!(next.number, 2);
        assert_eq!(next.state.as_deref(), Some("upstream-secret-state"));
        // Another token, other arguments, another name, an altered state: refused.
        let other_args = json!({"a": 2, "b": [true]});
        for (token, args) in [("other", &args), ("tok", &other_args)] {
            let refused = rounds.round(
                &call(token, args),
                ClientCapabilities::default(),
                Some(&state),
                None,
            );
            assert!(matches!(refused, Err(ApiError::BadRequest(_))));
        }
        let mut renamed = call("tok", &args);
        renamed.name = "everything.other";
        assert!(
            rounds
                .round(&renamed, ClientCapabilities::default(), Some(&state), None)
                .is_err()
        );
        let mut altered = state.clone();
        altered.pop();
        altered.push(if state.ends_with('0') { '1' } else { '0' });
        assert!(
            rounds
                .round(
                    &call("tok", &args),
                    ClientCapabilities::default(),
                    Some(&altered),
                    None
                )
                .is_err()
        );
    }

    #[test]
    fn answers_only_to_questions_asked_and_only_with_a_state() {
        let rounds = rounds();
        let args = json!({});
        let state = first_state(&rounds, &args);
        let unasked: InputResponses =
            [("password".to_string(), json!({"action": "accept"}))].into();
        let refused = rounds.round(
            &call("tok", &args),
            ClientCapabilities::default(),
            Some(&state),
            Some(unasked.clone()),
        );
        assert!(matches!(refused, Err(ApiError::BadRequest(m)) if m.contains("password")));
        let stateless = rounds.round(
            &call("tok", &args),
            ClientCapabilities::default(),
            None,
            Some(unasked),
        );
        assert!(matches!(stateless, Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn a_round_state_expires() {
        let rounds = rounds();
        let args = json!({});
        let state = first_state(&rounds, &args);
        rounds.clock.advance(ROUND_TIME + Duration::from_secs(1));
        let late = rounds.round(
            &call("tok", &args),
            ClientCapabilities::default(),
            Some(&state),
            None,
        );
        assert!(matches!(late, Err(ApiError::BadRequest(m)) if m.contains("expired")));
    }

    #[test]
    fn a_call_ends_after_the_last_round() {
        let rounds = rounds();
        let args = json!({});
        let last = InputRound {
            number: MAX_ROUNDS,
            ..InputRound::default()
        };
        assert!(matches!(
            rounds.ask(&call("tok", &args), &last, asks("s"), None),
            Err(ApiError::UpstreamError(_))
        ));
    }
}
