-- Counts the commits that changed which tools a server has or what they
-- say (their names, ids or digests). A daemon keeps the digests of the
-- servers it synced in memory, tagged with this number, and trusts them
-- only while the row still carries it; any daemon sharing the database
-- that writes a server's tools moves it on. Every write of a server's tool
-- set must bump it, including future migrations that rewrite tools.
ALTER TABLE mcp_servers ADD COLUMN tools_version BIGINT NOT NULL DEFAULT 0;
