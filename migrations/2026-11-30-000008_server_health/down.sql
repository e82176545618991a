ALTER TABLE mcp_servers DROP COLUMN last_synced_at;
ALTER TABLE mcp_servers DROP COLUMN last_connected_at;
ALTER TABLE mcp_servers DROP COLUMN unreachable_since;
ALTER TABLE mcp_servers DROP COLUMN last_error;
