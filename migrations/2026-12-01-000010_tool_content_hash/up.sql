-- A digest of what the server said about each tool (name, description,
-- schemas, title, annotations), so a sync finds what changed by reading
-- (id, name, digest) instead of every stored tool in full. Rows written
-- before this column have '' and are compared in full once, by the next
-- sync of their server, which fills it in.
ALTER TABLE tools ADD COLUMN content_hash TEXT NOT NULL DEFAULT '';
