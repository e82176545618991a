-- What MCP gives a tool beyond its name, description and input schema.
-- Existing rows keep working: no title, no annotations, no output schema.
ALTER TABLE tools ADD COLUMN title TEXT NOT NULL DEFAULT '';
ALTER TABLE tools ADD COLUMN annotations TEXT;      -- JSON object, as the server sent it
ALTER TABLE tools ADD COLUMN output_schema TEXT;    -- JSON Schema of structured results
