ALTER TABLE mcp_servers DROP COLUMN authorization_url;
ALTER TABLE mcp_servers DROP COLUMN state_reason;
ALTER TABLE mcp_servers DROP COLUMN state;
