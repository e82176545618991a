//! One diesel schema that both backends accept: text ids, text JSON, bigint
//! timestamps. The DDL lives in `migrations/`, one tree both backends read.

diesel::table! {
    mcp_servers (id) {
        id -> Text,
        organization_id -> Text,
        name -> Text,
        transport -> Text,
        endpoint -> Text,
        transport_config -> Text,
        tool_count -> Integer,
        created_at -> BigInt,
        secret_names -> Text,
        state -> Text,
        state_reason -> Text,
        authorization_url -> Nullable<Text>,
        tool_prefix -> Text,
        server_info -> Nullable<Text>,
        last_error -> Text,
        unreachable_since -> Nullable<BigInt>,
        last_connected_at -> Nullable<BigInt>,
        last_synced_at -> Nullable<BigInt>,
        tools_version -> BigInt,
    }
}

diesel::table! {
    tools (id) {
        id -> Text,
        organization_id -> Text,
        name -> Text,
        qualified_name -> Text,
        description -> Text,
        input_schema -> Text,
        created_at -> BigInt,
        title -> Text,
        annotations -> Nullable<Text>,
        output_schema -> Nullable<Text>,
        content_hash -> Text,
    }
}

diesel::table! {
    server_tools (server_id, tool_id) {
        server_id -> Text,
        tool_id -> Text,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        organization_id -> Text,
        name -> Text,
        key_hash -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    oauth_authorizations (state_hash) {
        state_hash -> Text,
        organization_id -> Text,
        server_id -> Text,
        payload -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::joinable!(server_tools -> mcp_servers (server_id));
diesel::joinable!(server_tools -> tools (tool_id));
diesel::joinable!(oauth_authorizations -> mcp_servers (server_id));
diesel::allow_tables_to_appear_in_same_query!(
    mcp_servers,
    tools,
    server_tools,
    oauth_authorizations
);

diesel::table! {
    event_cursors (organization_id) {
        organization_id -> Text,
        last_seq -> BigInt,
    }
}

diesel::table! {
    server_events (organization_id, seq) {
        organization_id -> Text,
        seq -> BigInt,
        kind -> Text,
        server_id -> Text,
        payload -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    sync_leases (server_id) {
        server_id -> Text,
        holder -> Nullable<Text>,
        expires_at -> BigInt,
        requested -> BigInt,
        done -> BigInt,
    }
}
