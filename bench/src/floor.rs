//! The floor: the same rows a create writes (the server, N tools with their
//! digests, N mappings, the watch event and the organization's event
//! cursor), written by the fastest plain approach on one connection in one
//! transaction: COPY on PostgreSQL, one multi-row INSERT per table on SQLite.
//! And a sync's floor: `changed` of a stored server's tools given new
//! descriptions and the digests of their new content, its server row
//! touched and the event that announces it, one `UPDATE … FROM` per table
//! (from a `WITH v(id, d, h) AS (VALUES …)`,
//! which both backends read) in one transaction, by a writer that already
//! knows the difference (it reads nothing). [`SyncFloor`] says when its
//! rounds run.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use diesel::{Connection, SqliteConnection, connection::SimpleConnection};
use futures::SinkExt;

/// The rows of one synthetic server, built before the clock starts.
pub struct Rows {
    org: String,
    server_id: String,
    /// id, organization, name, description, input schema, content digest.
    tools: Vec<[String; 6]>,
    now: i64,
}

/// The watch event of a change and its cursor, as SQL both backends read:
/// the organization's cursor moved on, and the event written at it with a
/// payload of the daemon's shape (the server row and the tool names).
fn event_sql(rows: &Rows, kind: &str, change: &str, names: &[&str]) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let payload = serde_json::json!({
        "server": {
            "id": rows.server_id, "organization_id": rows.org, "name": "floor",
            "transport": "streamable_http", "endpoint": "http://127.0.0.1/mcp",
            "secret_names": "[]", "tool_count": rows.tools.len(), "created_at": rows.now,
            "state": "ready", "state_reason": "", "tool_prefix": "", "server_info": null,
            "last_error": "", "unreachable_since": null, "last_connected_at": rows.now,
            "last_synced_at": rows.now,
        },
        "tools": { change: names },
    });
    format!(
        "INSERT INTO event_cursors (organization_id, last_seq) VALUES ({org}, 1) \
         ON CONFLICT (organization_id) DO UPDATE SET last_seq = event_cursors.last_seq + 1; \
         INSERT INTO server_events (organization_id, seq, kind, server_id, payload, created_at) \
         SELECT organization_id, last_seq, {kind}, {server}, {payload}, {now} \
         FROM event_cursors WHERE organization_id = {org};",
        org = q(&rows.org),
        kind = q(kind),
        server = q(&rows.server_id),
        payload = q(&payload.to_string()),
        now = rows.now,
    )
}

impl Rows {
    fn created_event_sql(&self) -> String {
        let names: Vec<&str> = self.tools.iter().map(|t| t[2].as_str()).collect();
        event_sql(self, "created", "added", &names)
    }
}

impl Rows {
    pub fn new(n: usize) -> Rows {
        let org = format!("floor-{}", uuid::Uuid::now_v7().simple());
        let schema = r#"{"properties":{"x":{"description":"any integer","type":"integer"}},"type":"object"}"#;
        Rows {
            server_id: uuid::Uuid::now_v7().to_string(),
            tools: (0..n)
                .map(|i| {
                    [
                        uuid::Uuid::now_v7().to_string(),
                        org.clone(),
                        format!("tool_{i:04}"),
                        format!("Test tool number {i}; echoes its name and arguments."),
                        schema.to_owned(),
                        // The daemon stores a 32-character hex digest per
                        // tool; the same number of bytes here.
                        format!("{i:032x}"),
                    ]
                })
                .collect(),
            org,
            now: 1_800_000_000_000,
        }
    }
}

impl Rows {
    /// `(id, new description, new digest)` of the first `changed` tools,
    /// round `round`: a changed tool's row carries the digest of its new
    /// content, as the daemon's does.
    fn changes(&self, changed: usize, round: usize) -> Vec<(String, String, String)> {
        self.tools
            .iter()
            .enumerate()
            .take(changed)
            .map(|(i, t)| {
                (
                    t[0].clone(),
                    format!("{} (round {round})", t[3]),
                    format!("{:016x}{i:016x}", round + 1),
                )
            })
            .collect()
    }
}

/// The sync floor's statements as SQL text, which both backends read.
fn update_sql(rows: &Rows, changed: usize, round: usize) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let values: Vec<String> = rows
        .changes(changed, round)
        .iter()
        .map(|(id, d, h)| format!("({}, {}, {})", q(id), q(d), q(h)))
        .collect();
    let names: Vec<&str> = rows
        .tools
        .iter()
        .take(changed)
        .map(|t| t[2].as_str())
        .collect();
    format!(
        "WITH v(id, d, h) AS (VALUES {}) UPDATE tools SET description = v.d, content_hash = v.h FROM v WHERE tools.id = v.id; \
         UPDATE mcp_servers SET last_synced_at = {}, last_connected_at = {} WHERE id = {}; {}",
        values.join(","),
        rows.now + round as i64,
        rows.now + round as i64,
        q(&rows.server_id),
        event_sql(rows, "tools_changed", "updated", &names)
    )
}

pub struct PgFloor {
    client: tokio_postgres::Client,
}

impl PgFloor {
    pub async fn connect(url: &str) -> anyhow::Result<PgFloor> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("floor connection")?;
        tokio::spawn(connection);
        Ok(PgFloor { client })
    }

    /// Milliseconds to write `rows`.
    pub async fn write(&mut self, rows: &Rows) -> anyhow::Result<f64> {
        let tools_copy = copy_text(rows.tools.iter().map(|t| {
            let mut row = t.to_vec();
            // qualified_name: no prefix, as the daemon stores it.
            row.push(t[2].clone());
            row.push(rows.now.to_string());
            row
        }));
        let mappings_copy = copy_text(
            rows.tools
                .iter()
                .map(|t| vec![rows.server_id.clone(), t[0].clone()]),
        );
        let event = rows.created_event_sql();
        let started = Instant::now();
        let tx = self.client.transaction().await?;
        tx.execute(
            "INSERT INTO mcp_servers (id, organization_id, name, transport, endpoint, transport_config, tool_count, created_at) \
             VALUES ($1, $2, 'floor', 'streamable_http', 'http://127.0.0.1/mcp', '{}', $3, $4)",
            &[&rows.server_id, &rows.org, &(rows.tools.len() as i32), &rows.now],
        )
        .await?;
        for (statement, data) in [
            (
                "COPY tools (id, organization_id, name, description, input_schema, content_hash, qualified_name, created_at) FROM STDIN",
                tools_copy,
            ),
            (
                "COPY server_tools (server_id, tool_id) FROM STDIN",
                mappings_copy,
            ),
        ] {
            let sink = tx.copy_in::<_, Bytes>(statement).await?;
            futures::pin_mut!(sink);
            sink.send(Bytes::from(data)).await?;
            sink.finish().await?;
        }
        tx.batch_execute(&event).await?;
        tx.commit().await?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

impl PgFloor {
    /// Milliseconds to apply a sync of `changed` tools to `rows` (written
    /// before), round `round`.
    pub async fn update(
        &mut self,
        rows: &Rows,
        changed: usize,
        round: usize,
    ) -> anyhow::Result<f64> {
        let sql = format!("BEGIN; {} COMMIT;", update_sql(rows, changed, round));
        let started = Instant::now();
        self.client.batch_execute(&sql).await?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

/// COPY's text format: tab-separated, backslash escapes.
fn copy_text(rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = String::new();
    for row in rows {
        for (i, field) in row.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            for c in field.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
        out.push('\n');
    }
    out
}

pub struct SqliteFloor {
    conn: SqliteConnection,
}

impl SqliteFloor {
    pub fn connect(path: &str) -> anyhow::Result<SqliteFloor> {
        let mut conn = SqliteConnection::establish(path)?;
        conn.batch_execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        Ok(SqliteFloor { conn })
    }

    /// Moves every page of the WAL into the database and empties it, so the
    /// next write starts from an empty WAL (see [`CreateFloor::settle`]).
    fn settle(&mut self) -> anyhow::Result<()> {
        self.conn
            .batch_execute("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }

    /// Milliseconds to write `rows` (the SQL text is built before the clock starts).
    pub fn write(&mut self, rows: &Rows) -> anyhow::Result<f64> {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut sql = format!(
            "BEGIN; INSERT INTO mcp_servers (id, organization_id, name, transport, endpoint, transport_config, tool_count, created_at) \
             VALUES ({}, {}, 'floor', 'streamable_http', 'http://127.0.0.1/mcp', '{{}}', {}, {});",
            q(&rows.server_id),
            q(&rows.org),
            rows.tools.len(),
            rows.now
        );
        if !rows.tools.is_empty() {
            let tools: Vec<String> = rows
                .tools
                .iter()
                .map(|t| {
                    format!(
                        "({}, {}, {}, {}, {}, {}, {}, {})",
                        q(&t[0]),
                        q(&t[1]),
                        q(&t[2]),
                        q(&t[2]),
                        q(&t[3]),
                        q(&t[4]),
                        q(&t[5]),
                        rows.now
                    )
                })
                .collect();
            let mappings: Vec<String> = rows
                .tools
                .iter()
                .map(|t| format!("({}, {})", q(&rows.server_id), q(&t[0])))
                .collect();
            sql.push_str(&format!(
                "INSERT INTO tools (id, organization_id, name, qualified_name, description, input_schema, content_hash, created_at) VALUES {};\
                 INSERT INTO server_tools (server_id, tool_id) VALUES {};",
                tools.join(","),
                mappings.join(",")
            ));
        }
        sql.push_str(&rows.created_event_sql());
        sql.push_str("COMMIT;");
        let started = Instant::now();
        self.conn.batch_execute(&sql)?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

impl SqliteFloor {
    /// Milliseconds to apply a sync of `changed` tools to `rows` (written
    /// before), round `round`.
    pub fn update(&mut self, rows: &Rows, changed: usize, round: usize) -> anyhow::Result<f64> {
        let sql = format!("BEGIN; {} COMMIT;", update_sql(rows, changed, round));
        let started = Instant::now();
        self.conn.batch_execute(&sql)?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

/// The create floor's writes, one at a time, as [`SyncFloor`]'s rounds run
/// and for the same reason: the registry scenario writes one new server of
/// `n` tools right after each of the daemon's creates, then `runs` more back
/// to back (the figure it used to report alone). Small creates gain most
/// from warm caches: SQLite's floor at 1 and 50 tools took 0.17 and
/// 0.39-0.60 ms back to back against 0.31-0.41 and 0.61-0.68 ms with 64 MB
/// written before each write; at 500 and 5,000 tools, no difference.
///
/// On SQLite the WAL is emptied, untimed, before each floor write and, by
/// the scenario, before each of the daemon's creates and closes (see
/// [`CreateFloor::settle`]).
pub struct CreateFloor {
    n: usize,
    conn: FloorConn,
}

impl CreateFloor {
    pub async fn postgres(url: &str, n: usize) -> anyhow::Result<CreateFloor> {
        let conn = FloorConn::Pg(PgFloor::connect(url).await?);
        Ok(CreateFloor { n, conn })
    }

    pub fn sqlite(path: &str, n: usize) -> anyhow::Result<CreateFloor> {
        let conn = FloorConn::Sqlite(SqliteFloor::connect(path)?);
        Ok(CreateFloor { n, conn })
    }

    /// Milliseconds to write the next server (its rows are built, and the
    /// WAL settled, before the clock starts).
    pub async fn write(&mut self) -> anyhow::Result<f64> {
        let rows = Rows::new(self.n);
        self.settle().await?;
        self.conn.write(&rows).await
    }

    /// On SQLite, checkpoints and empties the WAL, so that the write that
    /// follows (the floor's or the daemon's) starts from the same state.
    /// SQLite checkpoints at the commit that takes the WAL past 1,000
    /// pages, on the committing connection; a create of 5,000 tools writes
    /// 700-800 pages, so with the daemon's creates and the floor's writes
    /// alternating, every second commit paid for both writes' pages, and
    /// which side that was held for a whole run. From an empty WAL, neither
    /// does. PostgreSQL checkpoints in the background: nothing to do.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        match &mut self.conn {
            FloorConn::Pg(_) => Ok(()),
            FloorConn::Sqlite(floor) => tokio::task::block_in_place(|| floor.settle()),
        }
    }
}

/// The sync floor's rounds, one at a time: the sync scenario runs one right
/// after each of the daemon's syncs, so the floor's transaction meets the
/// machine as the daemon's does (its caches holding the listing just
/// parsed, the test server's answer and the daemon's work), and then
/// `runs` more back to back, which is how it used to be measured alone.
/// Back to back, each round finds the CPU's caches warm from the one
/// before: SQLite's floor took 0.07-0.14 ms that way, against 0.35-0.37 ms after
/// 64 MB were written in between (quick runs, 1,000 tools, 10 changed),
/// while the daemon's sync executes about 1.4 times the floor's
/// instructions (callgrind); a hot loop is a transaction no request meets.
pub struct SyncFloor {
    rows: Rows,
    changed: usize,
    round: usize,
    conn: FloorConn,
}

enum FloorConn {
    Pg(PgFloor),
    Sqlite(SqliteFloor),
}

// SQLite's floor runs on the runtime's thread, handed over for the
// milliseconds it takes (at most), rather than on another thread, whose
// caches would be a third state.
impl FloorConn {
    async fn write(&mut self, rows: &Rows) -> anyhow::Result<f64> {
        match self {
            FloorConn::Pg(floor) => floor.write(rows).await,
            FloorConn::Sqlite(floor) => tokio::task::block_in_place(|| floor.write(rows)),
        }
    }

    async fn update(&mut self, rows: &Rows, changed: usize, round: usize) -> anyhow::Result<f64> {
        match self {
            FloorConn::Pg(floor) => floor.update(rows, changed, round).await,
            FloorConn::Sqlite(floor) => {
                tokio::task::block_in_place(|| floor.update(rows, changed, round))
            }
        }
    }
}

impl SyncFloor {
    /// A server of `n` tools written on PostgreSQL at `url`.
    pub async fn postgres(url: &str, n: usize, changed: usize) -> anyhow::Result<SyncFloor> {
        SyncFloor::new(n, changed, FloorConn::Pg(PgFloor::connect(url).await?)).await
    }

    /// A server of `n` tools written to the SQLite file at `path`.
    pub async fn sqlite(path: &str, n: usize, changed: usize) -> anyhow::Result<SyncFloor> {
        SyncFloor::new(n, changed, FloorConn::Sqlite(SqliteFloor::connect(path)?)).await
    }

    async fn new(n: usize, changed: usize, mut conn: FloorConn) -> anyhow::Result<SyncFloor> {
        let rows = Rows::new(n);
        conn.write(&rows).await?;
        Ok(SyncFloor {
            rows,
            changed,
            round: 0,
            conn,
        })
    }

    /// Milliseconds of the next round (each changes the same tools again).
    pub async fn round(&mut self) -> anyhow::Result<f64> {
        self.round += 1;
        self.conn.update(&self.rows, self.changed, self.round).await
    }
}
