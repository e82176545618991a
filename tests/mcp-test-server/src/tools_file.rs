//! `--tools-file`: a tool set a test changes while the server runs, by
//! rewriting a JSON file that is read anew for every `tools/list` and
//! `tools/call`; with `--notify-list-changed`, changes to it are announced.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rmcp::{
    Peer, RoleServer,
    model::{ServerNotification, SubscriptionFilter, Tool, ToolListChangedNotification},
    service::SubscriptionContext,
};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

/// How often `--notify-list-changed` looks at the file.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The keys an entry may have; anything else is refused, so that a typo (say
/// `inputSchema`) fails loudly instead of quietly getting the default.
const KEYS: [&str; 6] = [
    "name",
    "description",
    "title",
    "input_schema",
    "output_schema",
    "annotations",
];

pub struct ToolsFile {
    path: PathBuf,
}

impl ToolsFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tools the file lists now, or why it lists none.
    pub fn load(&self) -> Result<Vec<Tool>, String> {
        let fail = |why: String| format!("--tools-file {}: {why}", self.path.display());
        let text = std::fs::read_to_string(&self.path).map_err(|e| fail(e.to_string()))?;
        parse(&text).map_err(fail)
    }
}

/// Parses the file format: a JSON array of `{"name", "description"?,
/// "title"?, "input_schema"?, "output_schema"?, "annotations"?}`.
fn parse(text: &str) -> Result<Vec<Tool>, String> {
    let entries: Vec<Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array: {e}"))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| tool(entry).map_err(|e| format!("tool #{index}: {e}")))
        .collect()
}

fn tool(entry: Value) -> Result<Tool, String> {
    let Value::Object(mut entry) = entry else {
        return Err("not a JSON object".to_owned());
    };
    if let Some(key) = entry.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return Err(format!("unknown key {key:?}"));
    }
    if !entry.get("name").is_some_and(Value::is_string) {
        return Err("\"name\" must be a string".to_owned());
    }
    // rmcp's own (camelCase) wire form, so its `Tool` checks the rest.
    let mut wire = Map::new();
    for (from, to) in [
        ("name", "name"),
        ("description", "description"),
        ("title", "title"),
        ("input_schema", "inputSchema"),
        ("output_schema", "outputSchema"),
        ("annotations", "annotations"),
    ] {
        if let Some(value) = entry.remove(from) {
            wire.insert(to.to_owned(), value);
        }
    }
    wire.entry("description").or_insert_with(|| json!(""));
    wire.entry("inputSchema")
        .or_insert_with(|| json!({ "type": "object" }));
    serde_json::from_value(Value::Object(wire)).map_err(|e| e.to_string())
}

/// `--notify-list-changed`: who hears about changes to the file.
///
/// Sessions with the `initialize` lifecycle get the notification on their
/// peer; 2026-07-28 clients have no session and must hold a
/// `subscriptions/listen` request open instead (see [`ListChanged::listen`]).
pub struct ListChanged {
    peers: Mutex<Vec<Peer<RoleServer>>>,
    /// Bumped on every change; each open subscription watches it.
    generation: watch::Sender<u64>,
}

impl ListChanged {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            peers: Mutex::new(Vec::new()),
            generation: watch::Sender::new(0),
        })
    }

    /// Called once a legacy session is initialized.
    pub fn add_peer(&self, peer: Peer<RoleServer>) {
        let mut peers = self.peers.lock().expect("peers lock");
        peers.retain(|peer| !peer.is_transport_closed());
        peers.push(peer);
    }

    /// What `subscriptions/listen` may opt in to.
    pub fn filter() -> SubscriptionFilter {
        SubscriptionFilter::builder().tools_list_changed().build()
    }

    /// Serves one `subscriptions/listen` request until the client ends it.
    pub async fn listen(&self, subscription: SubscriptionContext) {
        let mut changes = self.generation.subscribe();
        loop {
            tokio::select! {
                () = subscription.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let notification = ServerNotification::ToolListChangedNotification(
                        ToolListChangedNotification {
                            method: Default::default(),
                            extensions: Default::default(),
                        },
                    );
                    if subscription.sink().send(notification).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Polls the file's metadata forever and announces every change, a file
    /// that appears or disappears included. Metadata rather than content, so
    /// that a `touch` is announced too.
    pub async fn watch(self: Arc<Self>, path: PathBuf) {
        let stamp = |path: &Path| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(path).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        };
        let mut last = stamp(&path);
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        loop {
            ticks.tick().await;
            let now = stamp(&path);
            if now == last {
                continue;
            }
            last = now;
            self.generation.send_modify(|n| *n += 1);
            let peers = self.peers.lock().expect("peers lock").clone();
            for peer in peers {
                // One task each, so a session slow to take it delays no other;
                // a session that is gone cannot hear it, and that is fine.
                tokio::spawn(async move {
                    let _ = peer.notify_tool_list_changed().await;
                });
            }
            self.peers
                .lock()
                .expect("peers lock")
                .retain(|peer| !peer.is_transport_closed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_optional_fields() {
        let tools = parse(
            r#"[{"name": "a"},
                {"name": "b", "description": "B", "title": "Bee",
                 "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}},
                 "output_schema": {"type": "object"},
                 "annotations": {"readOnlyHint": true}}]"#,
        )
        .unwrap();
        assert_eq!(tools[0].name, "a");
        assert_eq!(tools[0].description.as_deref(), Some(""));
        assert_eq!(tools[0].input_schema.get("type"), Some(&json!("object")));
        assert_eq!(tools[0].annotations, None);
        assert_eq!(tools[1].title.as_deref(), Some("Bee"));
        assert!(tools[1].output_schema.is_some());
        let annotations = tools[1].annotations.as_ref().unwrap();
        assert_eq!(annotations.read_only_hint, Some(true));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(parse("{}").is_err());
        assert!(parse(r#"[{"description": "no name"}]"#).is_err());
        assert!(parse(r#"[{"name": 3}]"#).is_err());
        assert!(parse(r#"[{"name": "a", "inputSchema": {}}]"#).is_err());
        assert!(parse(r#"[{"name": "a", "input_schema": "object"}]"#).is_err());
    }
}
