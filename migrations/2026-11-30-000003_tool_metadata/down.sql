ALTER TABLE tools DROP COLUMN output_schema;
ALTER TABLE tools DROP COLUMN annotations;
ALTER TABLE tools DROP COLUMN title;
