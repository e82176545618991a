DROP TABLE server_tools;
DROP TABLE tools;
DROP TABLE mcp_servers;
