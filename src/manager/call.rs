//! The call use case: check the arguments against the tool's stored input
//! schema, then run the call on the server's live session. The database is
//! read with one short checkout before any MCP traffic, never during it.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::{CallStats, Manager, ManagerError, authorize, validate};
use crate::{
    mcp::McpError,
    model::{CallEvent, CallTarget, ClientAnswer, ToolCallResult},
    store::{Contact, track_connections},
};

/// Largest `arguments_json` accepted.
pub const MAX_ARGUMENTS: usize = 1024 * 1024;
/// Compiled input schemas kept; a full cache starts over.
const SCHEMA_CACHE: usize = 1024;
/// Schema violations named in one message.
const MAX_REPORTED: usize = 3;

/// No `Debug`: arguments may carry anything the caller sends.
#[derive(Clone)]
pub struct CallTool {
    pub server_id: String,
    pub tool_name: String,
    /// A JSON object; empty means `{}`.
    pub arguments_json: String,
}

/// Compiled input schemas by the hash of their text: compiling is far
/// dearer than validating, and a tool's schema rarely changes.
#[derive(Default)]
pub(super) struct SchemaCache(Mutex<HashMap<u64, Arc<jsonschema::Validator>>>);

impl Manager {
    /// `deadline` is the caller's (the gRPC deadline), if it set one.
    pub async fn call_tool(
        &self,
        org: &str,
        call: CallTool,
        deadline: Option<Duration>,
    ) -> (Result<ToolCallResult, ManagerError>, CallStats) {
        let started = Instant::now();
        let unary = async |arguments, target: CallTarget, remaining| {
            self.mcp
                .call_tool(
                    org,
                    &call.server_id,
                    &target.transport,
                    &call.tool_name,
                    arguments,
                    remaining,
                )
                .await
        };
        let (result, stats, renewed) = self.run_call(org, &call, deadline, unary).await;
        if !renewed {
            return (result, stats);
        }
        // The server refused an access token that is now renewed: the call
        // never ran, so it goes once more.
        let remaining = deadline.map(|d| d.saturating_sub(started.elapsed()));
        let (result, again, _) = self.run_call(org, &call, remaining, unary).await;
        let stats = CallStats {
            peak_connections: stats.peak_connections.max(again.peak_connections),
            mcp: stats.mcp + again.mcp,
            diff: stats.diff + again.diff,
            persist: stats.persist + again.persist,
        };
        (result, stats)
    }

    /// A call whose caller follows it: progress, log messages and the
    /// server's requests arrive as `events`; the caller's `answers` go back.
    /// The call ends (cancelled) when the caller stops receiving events.
    pub async fn stream_tool_call(
        &self,
        org: &str,
        call: CallTool,
        deadline: Option<Duration>,
        events: mpsc::Sender<CallEvent>,
        answers: mpsc::Receiver<ClientAnswer>,
    ) -> (Result<ToolCallResult, ManagerError>, CallStats) {
        // A streamed call is not repeated after a token renewal: its caller
        // may have seen events already, and is told to call again.
        let (result, stats, _) = self
            .run_call(
                org,
                &call,
                deadline,
                async |arguments, target, remaining| {
                    self.mcp
                        .stream_tool_call(
                            org,
                            &call.server_id,
                            &target.transport,
                            &call.tool_name,
                            arguments,
                            remaining,
                            events,
                            answers,
                        )
                        .await
                },
            )
            .await;
        (result, stats)
    }

    /// What both kinds of call share: the checks and the one short checkout
    /// first, then `mcp_call` with what is left of the deadline, timed. Also
    /// says whether the server refused the OAuth access token and it was
    /// renewed (then the call, which did not run, may go again).
    async fn run_call(
        &self,
        org: &str,
        call: &CallTool,
        deadline: Option<Duration>,
        mcp_call: impl AsyncFnOnce(
            Map<String, Value>,
            CallTarget,
            Option<Duration>,
        ) -> Result<ToolCallResult, McpError>,
    ) -> (Result<ToolCallResult, ManagerError>, CallStats, bool) {
        let started = Instant::now();
        let mut stats = CallStats::default();
        let mut renewed = false;
        let (result, peak) = track_connections(async {
            let (arguments, target) = self.prepare(org, call).await?;
            let transport = target.transport.clone();
            let was_unreachable = target.unreachable;
            let mcp_started = Instant::now();
            let remaining = deadline.map(|d| d.saturating_sub(started.elapsed()));
            let result = mcp_call(arguments, target, remaining).await;
            stats.mcp = mcp_started.elapsed();
            // Written on a change only: calls to a server that is down do
            // not each write a row (syncs and health checks keep its error
            // current).
            match &result {
                Err(err) if err.unreachable() && !was_unreachable => {
                    self.note_contact(org, &call.server_id, Contact::Unreachable(err.to_string()))
                        .await;
                }
                Ok(_) if was_unreachable => {
                    self.note_contact(org, &call.server_id, Contact::Reached).await;
                }
                _ => {}
            }
            if let Err(err) = &result {
                match authorize::refusal(&transport, err) {
                    Some(authorize::Refusal::Renew(stale)) => {
                        self.renew_grant(org, &call.server_id, stale).await?;
                        renewed = true;
                        return Err(ManagerError::Unavailable(format!(
                            "the MCP server refused mcpd's access token; mcpd renewed it: retry the call ({err})"
                        )));
                    }
                    Some(authorize::Refusal::Reauthorize(challenge)) => {
                        return Err(self
                            .reauthorize(org, &call.server_id, &transport, challenge, false)
                            .await);
                    }
                    None => {}
                }
            }
            Ok(result?)
        })
        .await;
        stats.peak_connections = peak;
        (result, stats, renewed)
    }

    /// Validation and the one short checkout, before any MCP traffic.
    async fn prepare(
        &self,
        org: &str,
        call: &CallTool,
    ) -> Result<(Map<String, Value>, CallTarget), ManagerError> {
        validate::organization_id(org)?;
        validate::server_id(&call.server_id)?;
        validate::tool_name(&call.tool_name)?;
        let arguments = parse_arguments(&call.arguments_json)?;
        let mut target = self
            .store
            .call_target(org, &call.server_id, &call.tool_name)
            .await?;
        self.schemas.check(&target.input_schema_json, &arguments)?;
        target.transport = self
            .fresh_transport(org, &call.server_id, target.transport)
            .await?;
        Ok((arguments, target))
    }
}

fn parse_arguments(json: &str) -> Result<Map<String, Value>, ManagerError> {
    let invalid = ManagerError::InvalidArgument;
    if json.len() > MAX_ARGUMENTS {
        return Err(invalid(format!(
            "arguments_json is {} bytes long; at most {MAX_ARGUMENTS} are allowed",
            json.len()
        )));
    }
    if json.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(arguments)) => Ok(arguments),
        Ok(other) => Err(invalid(format!(
            "arguments_json must be a JSON object, not {}",
            json_kind(&other)
        ))),
        Err(e) => Err(invalid(format!("arguments_json is not valid JSON: {e}"))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl SchemaCache {
    /// Checks the arguments against the schema (draft 2020-12 unless the
    /// schema's `$schema` names another, such as draft-07). A schema that
    /// does not compile (say, a `$ref` to a URL: nothing is fetched) is left
    /// to the server to enforce.
    fn check(&self, schema_json: &str, arguments: &Map<String, Value>) -> Result<(), ManagerError> {
        let Some(validator) = self.validator(schema_json) else {
            return Ok(());
        };
        let instance = Value::Object(arguments.clone());
        let problems: Vec<String> = validator
            .iter_errors(&instance)
            .take(MAX_REPORTED + 1)
            .map(|error| {
                let path = error.instance_path().to_string();
                let at = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                format!("at {at}: {error}")
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        let more = if problems.len() > MAX_REPORTED {
            "; …"
        } else {
            ""
        };
        Err(ManagerError::InvalidArgument(format!(
            "arguments_json does not match the tool's input schema: {}{more}",
            problems[..problems.len().min(MAX_REPORTED)].join("; ")
        )))
    }

    fn validator(&self, schema_json: &str) -> Option<Arc<jsonschema::Validator>> {
        let mut hasher = DefaultHasher::new();
        schema_json.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(found) = self.0.lock().ok()?.get(&key) {
            return Some(found.clone());
        }
        let schema: Value = serde_json::from_str(schema_json).ok()?;
        let validator = match jsonschema::validator_for(&schema) {
            Ok(validator) => Arc::new(validator),
            Err(err) => {
                tracing::debug!(error = %err, "a tool's input schema does not compile; the server checks its own arguments");
                return None;
            }
        };
        let mut cache = self.0.lock().ok()?;
        if cache.len() >= SCHEMA_CACHE {
            cache.clear();
        }
        cache.insert(key, validator.clone());
        Some(validator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: &str) -> Map<String, Value> {
        parse_arguments(json).unwrap()
    }

    #[test]
    fn arguments_must_be_an_object() {
        assert!(args("").is_empty());
        assert_eq!(args(r#"{"a": 1}"#)["a"], 1);
        for (json, says) in [
            ("[1]", "an array"),
            ("3", "a number"),
            ("{", "not valid JSON"),
        ] {
            let err = parse_arguments(json).unwrap_err().to_string();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn violations_name_their_path_in_2020_12_and_draft_07() {
        let cache = SchemaCache::default();
        let schema_2020 = r##"{"type":"object","properties":{"a":{"type":"integer"},"b":{"$ref":"#/$defs/pos"}},"$defs":{"pos":{"minimum":0}},"required":["a"]}"##;
        assert!(
            cache
                .check(schema_2020, &args(r#"{"a": 2, "b": 1}"#))
                .is_ok()
        );
        let err = cache
            .check(schema_2020, &args(r#"{"a": "x", "b": -1}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at /a:") && err.contains("at /b:"), "{err}");
        let missing = cache
            .check(schema_2020, &args("{}"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("at /:") && missing.contains("\"a\""),
            "{missing}"
        );

        let draft7 = r##"{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"n":{"type":"number","exclusiveMaximum":3}},"definitions":{}}"##;
        assert!(cache.check(draft7, &args(r#"{"n": 2}"#)).is_ok());
        let err = cache
            .check(draft7, &args(r#"{"n": 3}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at /n:"), "{err}");
    }

    #[test]
    fn a_schema_that_does_not_compile_is_left_to_the_server() {
        let cache = SchemaCache::default();
        let remote =
            r#"{"type":"object","properties":{"a":{"$ref":"https://example.com/s.json"}}}"#;
        assert!(cache.check(remote, &args(r#"{"a": 1}"#)).is_ok());
    }
}
