-- Back to organization-wide tool names: only possible while no two tools of
-- an organization share a name (the unique constraint says so if not).
CREATE TABLE tools_v1 (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,
    description      TEXT NOT NULL,
    input_schema     TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    title            TEXT NOT NULL DEFAULT '',
    annotations      TEXT,
    output_schema    TEXT,
    CONSTRAINT tools_org_name_key UNIQUE (organization_id, name)
);
INSERT INTO tools_v1 (id, organization_id, name, description, input_schema, created_at, title,
                      annotations, output_schema)
SELECT id, organization_id, name, description, input_schema, created_at, title, annotations,
       output_schema
FROM tools;
CREATE TABLE server_tools_v1 (
    server_id TEXT NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    tool_id   TEXT NOT NULL REFERENCES tools_v1 (id) ON DELETE CASCADE,
    PRIMARY KEY (server_id, tool_id)
);
INSERT INTO server_tools_v1 (server_id, tool_id) SELECT server_id, tool_id FROM server_tools;
DROP TABLE server_tools;
DROP TABLE tools;
ALTER TABLE tools_v1 RENAME TO tools;
ALTER TABLE server_tools_v1 RENAME TO server_tools;
CREATE INDEX server_tools_tool_id_idx ON server_tools (tool_id);
ALTER TABLE mcp_servers DROP COLUMN tool_prefix;
