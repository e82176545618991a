-- The registry. Uniqueness rules live here, in the database, so that several
-- daemons sharing one PostgreSQL cannot race past them.
CREATE TABLE mcp_servers (
    id               TEXT PRIMARY KEY,          -- UUIDv7: ordered by creation, used for keyset paging
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    transport        TEXT NOT NULL CHECK (transport IN ('stdio', 'streamable_http', 'sse')),
    endpoint         TEXT NOT NULL,             -- command or URL; never a secret
    transport_config TEXT NOT NULL,             -- JSON of the full transport request
    tool_count       INTEGER NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,           -- unix milliseconds
    CONSTRAINT mcp_servers_org_name_key UNIQUE (organization_id, name)
);
CREATE INDEX mcp_servers_org_id_idx ON mcp_servers (organization_id, id);

CREATE TABLE tools (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT NOT NULL,
    input_schema     TEXT NOT NULL,             -- JSON Schema, as JSON text
    created_at       BIGINT NOT NULL,
    -- A tool name means one tool within an organization.
    CONSTRAINT tools_org_name_key UNIQUE (organization_id, name)
);

CREATE TABLE server_tools (
    server_id TEXT NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    tool_id   TEXT NOT NULL REFERENCES tools (id) ON DELETE CASCADE,
    PRIMARY KEY (server_id, tool_id)
);
CREATE INDEX server_tools_tool_id_idx ON server_tools (tool_id);
