-- What WatchMcpServers streams: the changes to an organization's servers,
-- each with a cursor (`seq`) that counts up by one per organization with no
-- gap, in commit order. A writer takes the next cursor from event_cursors by
-- updating the organization's row there as the last statement of its
-- transaction: the row lock, held to commit, serializes the writers of one
-- organization for that instant, so a reader that sees cursor N has also
-- seen every cursor below it. The table keeps the newest events only (see
-- the daemon's --watch-retention flags); pruning removes a prefix.
CREATE TABLE event_cursors (
    organization_id TEXT PRIMARY KEY NOT NULL,
    last_seq BIGINT NOT NULL
);

CREATE TABLE server_events (
    organization_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    server_id TEXT NOT NULL,
    -- JSON: the server as it stood after the change, and the names of the
    -- tools it changed.
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (organization_id, seq)
);

CREATE INDEX server_events_created_at_idx ON server_events (created_at);
