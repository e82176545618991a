-- One row per server whose tools a live session was told changed
-- (`notifications/tools/list_changed`): who lists them now, so that of the
-- replicas sharing the database one at a time does, and which requests are
-- done. A replica that hears an announcement adds one to `requested` (that
-- number is its request); the holder takes the lease with the `requested`
-- of that moment, lists and stores, then records it as `done` and lists
-- again if `requested` moved on meanwhile. A holder that died leaves the
-- lease to whoever finds it past `expires_at` with a request not done.
CREATE TABLE sync_leases (
    server_id  TEXT PRIMARY KEY REFERENCES mcp_servers (id) ON DELETE CASCADE,
    holder     TEXT,                        -- the holding daemon's id; NULL: free
    expires_at BIGINT NOT NULL DEFAULT 0,   -- unix milliseconds
    requested  BIGINT NOT NULL DEFAULT 0,   -- requests made (a generation counter)
    done       BIGINT NOT NULL DEFAULT 0    -- requests covered by a finished sync
);
