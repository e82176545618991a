DROP TABLE server_events;
DROP TABLE event_cursors;
