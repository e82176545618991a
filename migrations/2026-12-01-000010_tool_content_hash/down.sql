ALTER TABLE tools DROP COLUMN content_hash;
