-- API keys: only a SHA-256 of each key is stored; the key itself is shown once.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    name            TEXT NOT NULL,
    key_hash        TEXT NOT NULL,              -- hex SHA-256 of the key
    created_at      BIGINT NOT NULL,            -- unix milliseconds
    revoked_at      BIGINT,                     -- set once, never cleared
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_org_idx ON api_keys (organization_id, id);

-- transport_config is sealed (encrypted) from now on; the names of the
-- secrets it holds (header and env names) stay readable for responses.
ALTER TABLE mcp_servers ADD COLUMN secret_names TEXT NOT NULL DEFAULT '[]';
