-- The health of a ready server's connection, apart from its authorization
-- state: when mcpd last reached it, when it last listed its tools, and since
-- when (and why) it cannot be reached. NULL unreachable_since: the last
-- contact worked. Servers stored before were reached and listed when they
-- were created.
ALTER TABLE mcp_servers ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
ALTER TABLE mcp_servers ADD COLUMN unreachable_since BIGINT;
ALTER TABLE mcp_servers ADD COLUMN last_connected_at BIGINT;
ALTER TABLE mcp_servers ADD COLUMN last_synced_at BIGINT;
UPDATE mcp_servers SET last_connected_at = created_at, last_synced_at = created_at
    WHERE state = 'ready';
