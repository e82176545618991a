-- Authorizations in flight (the OAuth 2.1 authorization code flow): the
-- `state` a browser brings back to the callback. Only its SHA-256 is stored;
-- a row is taken (deleted) once, and is void after `expires_at`. The payload
-- (PKCE verifier, client and endpoints) is sealed like transport configs.
CREATE TABLE oauth_authorizations (
    state_hash      TEXT PRIMARY KEY,            -- hex SHA-256 of the state
    organization_id TEXT NOT NULL,
    server_id       TEXT NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    payload         TEXT NOT NULL,               -- sealed, bound to state_hash
    created_at      BIGINT NOT NULL,             -- unix milliseconds
    expires_at      BIGINT NOT NULL              -- unix milliseconds
);
CREATE INDEX oauth_authorizations_expires_idx ON oauth_authorizations (expires_at);
CREATE INDEX oauth_authorizations_server_idx ON oauth_authorizations (server_id);
