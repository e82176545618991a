-- Whether mcpd can use a server: servers behind the OAuth authorization code
-- flow wait for a person ('authorization_pending') and can lose their grant
-- ('error'). Every earlier server is ready.
ALTER TABLE mcp_servers ADD COLUMN state TEXT NOT NULL DEFAULT 'ready'
    CHECK (state IN ('ready', 'authorization_pending', 'error'));
ALTER TABLE mcp_servers ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
-- Sealed like transport_config (it carries the flow's single-use state).
ALTER TABLE mcp_servers ADD COLUMN authorization_url TEXT;
