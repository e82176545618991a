-- What a server says about itself when a session starts (name, version,
-- protocol version, capabilities, instructions), as JSON; kept current by
-- creates, syncs and transport updates. Earlier rows have none.
ALTER TABLE mcp_servers ADD COLUMN server_info TEXT;
