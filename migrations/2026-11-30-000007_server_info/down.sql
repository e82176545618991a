ALTER TABLE mcp_servers DROP COLUMN server_info;
