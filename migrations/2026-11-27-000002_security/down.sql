ALTER TABLE mcp_servers DROP COLUMN secret_names;
DROP TABLE api_keys;
