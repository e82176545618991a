-- A tool is its server's: the name a server gives a tool is unique within
-- that server only, so two registrations of one service in an organization
-- both keep every tool. Organization-wide names are a view: the server's
-- tool_prefix followed by the tool's name, the qualified name; collisions
-- between qualified names are reported, never refused.
--
-- SQLite cannot drop a constraint, so `tools` (and `server_tools`, which
-- refers to it) are rebuilt, in SQL both backends read alike. Existing tools
-- keep their ids, mappings and names (qualified name = name: no prefix).
ALTER TABLE mcp_servers ADD COLUMN tool_prefix TEXT NOT NULL DEFAULT '';

CREATE TABLE tools_v2 (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL,
    name             TEXT NOT NULL,              -- as the server gives it
    qualified_name   TEXT NOT NULL,              -- the server's tool_prefix || name
    description      TEXT NOT NULL,
    input_schema     TEXT NOT NULL,              -- JSON Schema, as JSON text
    created_at       BIGINT NOT NULL,
    title            TEXT NOT NULL DEFAULT '',
    annotations      TEXT,
    output_schema    TEXT
);
INSERT INTO tools_v2 (id, organization_id, name, qualified_name, description, input_schema,
                      created_at, title, annotations, output_schema)
SELECT id, organization_id, name, name, description, input_schema,
       created_at, title, annotations, output_schema
FROM tools;

CREATE TABLE server_tools_v2 (
    server_id TEXT NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    tool_id   TEXT NOT NULL REFERENCES tools_v2 (id) ON DELETE CASCADE,
    PRIMARY KEY (server_id, tool_id)
);
INSERT INTO server_tools_v2 (server_id, tool_id) SELECT server_id, tool_id FROM server_tools;

DROP TABLE server_tools;
DROP TABLE tools;
ALTER TABLE tools_v2 RENAME TO tools;
ALTER TABLE server_tools_v2 RENAME TO server_tools;
CREATE INDEX server_tools_tool_id_idx ON server_tools (tool_id);
-- The organization's catalogue, by qualified name.
CREATE INDEX tools_org_qualified_name_idx ON tools (organization_id, qualified_name);
