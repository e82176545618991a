//! Property tests (run briefly with the unit tests): request validation and
//! tool-schema handling take arbitrary input without panicking, and what
//! they accept always satisfies the documented rules.

use std::collections::HashMap;

use proptest::prelude::*;

use super::{tools, validate};
use crate::{mcp::ListedTool, model::Transport};

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::hash_map(".{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn schema() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    prop_oneof![
        // Mostly object schemas, some with other types, some without.
        prop::collection::hash_map(".{0,8}", json_value(), 0..5).prop_map(|m| {
            let mut map: serde_json::Map<_, _> = m.into_iter().collect();
            map.insert("type".into(), "object".into());
            map
        }),
        prop::collection::hash_map(".{0,8}", json_value(), 0..5)
            .prop_map(|m| m.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn server_names_accepted_follow_the_rules(name in ".{0,80}") {
        if validate::server_name(&name).is_ok() {
            prop_assert!(!name.is_empty() && name.len() <= validate::MAX_SERVER_NAME);
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
        }
    }

    #[test]
    fn transports_accepted_are_bounded_and_safe(
        url in prop_oneof![".{0,60}", "(http|https|ftp|file)://[a-z0-9.:@/%-]{0,40}"],
        headers in prop::collection::hash_map(".{0,12}", ".{0,20}", 0..4),
        command in ".{0,30}",
        args in prop::collection::vec(".{0,10}", 0..4),
        env in prop::collection::hash_map(".{0,10}", ".{0,10}", 0..4),
    ) {
        let http = validate::transport(Some(validate::TransportRequest::StreamableHttp {
            url: url.clone(),
            headers: headers.clone(),
            oauth: None,
        }));
        if let Ok(Transport::StreamableHttp { url, headers, .. }) = http {
            prop_assert!(matches!(url.scheme(), "http" | "https"));
            prop_assert!(url.username().is_empty() && url.password().is_none());
            prop_assert!(headers.len() <= validate::MAX_HEADERS);
            for name in headers.keys() {
                prop_assert!(http::HeaderName::try_from(name.as_str()).is_ok());
            }
        }
        let stdio = validate::transport(Some(validate::TransportRequest::Stdio {
            command: command.clone(),
            args,
            env: env.clone(),
        }));
        if let Ok(Transport::Stdio { command, env, .. }) = stdio {
            prop_assert!(!command.trim().is_empty() && !command.contains('\0'));
            for name in env.keys() {
                prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            }
        }
        // Errors never echo header or env values.
        if let Err(err) = validate::transport(Some(validate::TransportRequest::Sse {
            url,
            headers: headers.keys().map(|k| (k.clone(), "s3cr3t\n".to_owned())).collect::<HashMap<_, _>>(),
        })) {
            prop_assert!(!err.to_string().contains("s3cr3t"));
        }
    }

    #[test]
    fn tool_checks_sort_every_tool_and_keep_only_valid_ones(
        raw in prop::collection::vec((".{0,140}", ".{0,40}", schema()), 0..20)
    ) {
        let count = raw.len();
        let listed: Vec<ListedTool> = raw
            .into_iter()
            .map(|(name, description, input_schema)| ListedTool {
                name,
                description: Some(description),
                input_schema,
                ..ListedTool::default()
            })
            .collect();
        let (ok, failed) = tools::check(listed);
        prop_assert_eq!(ok.len() + failed.len(), count);
        let mut names = std::collections::HashSet::new();
        for tool in &ok {
            prop_assert!(!tool.name.is_empty() && tool.name.len() <= tools::MAX_TOOL_NAME);
            prop_assert!(names.insert(tool.name.clone()), "duplicate accepted");
            let schema: serde_json::Value = serde_json::from_str(&tool.input_schema_json).unwrap();
            prop_assert_eq!(&schema["type"], "object");
        }
        for f in &failed {
            prop_assert!(!f.reason.is_empty());
        }
    }
}
