//! The relay's tables in PostgreSQL, and their migrations, run at every start.
//!
//! Migrations are numbered; `cloudci_schema` holds the last one applied. Several instances may
//! start at once: each runs the migrations in one transaction under a transaction-level advisory
//! lock, so exactly one applies them and the others find them applied.

use postgres::Client;

/// The advisory lock key migrations take (an arbitrary constant: "cloudci" in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_6c6f_7564_6369;

/// The migrations, in order; each runs once, in the transaction that records it.
const MIGRATIONS: &[&str] = &[
    // 1: the log. `log_head` is the one-row counter that hands out event seqs (see `pg.rs`:
    // why seqs are readable in commit order). Times are Unix seconds/milliseconds as in SQLite,
    // so both backends store the same values.
    "CREATE TABLE deliveries (
        id BIGSERIAL PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        processed BOOLEAN NOT NULL DEFAULT false,
        error TEXT
    );
    CREATE INDEX deliveries_pending ON deliveries (id) WHERE NOT processed;
    CREATE TABLE log_head (
        one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        seq BIGINT NOT NULL
    );
    INSERT INTO log_head (one, seq) VALUES (true, 0);
    CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        delivery_id BIGINT,
        kind TEXT NOT NULL,
        project_id BIGINT NOT NULL,
        project TEXT,
        git_ref TEXT,
        pipeline_id BIGINT,
        data TEXT NOT NULL,
        logged_at BIGINT NOT NULL
    );
    CREATE TABLE pipelines (
        id BIGINT PRIMARY KEY,
        project_id BIGINT NOT NULL,
        project TEXT,
        status TEXT NOT NULL,
        max_job_id BIGINT NOT NULL DEFAULT 0,
        basis TEXT NOT NULL DEFAULT '{}',
        reread BOOLEAN NOT NULL DEFAULT false,
        last_heard BIGINT NOT NULL
    );
    CREATE TABLE jobs (
        id BIGINT PRIMARY KEY,
        pipeline_id BIGINT,
        status TEXT NOT NULL,
        name TEXT,
        stage TEXT,
        allow_failure BOOLEAN,
        started BOOLEAN,
        artifacts BOOLEAN
    );
    CREATE INDEX jobs_by_name ON jobs (pipeline_id, name);",
    // 2: the catch-up's cursors (`catchup.rs`): up to when each project's pipelines are known
    // to have been heard, shared by whichever instance leads the catch-up.
    "CREATE TABLE cursors (
        project_id BIGINT PRIMARY KEY,
        unix_secs BIGINT NOT NULL
    );",
    // 3: retention (`retention.rs`): the highest seq removed, and where each instance's oldest
    // connected subscriber stands.
    "CREATE TABLE retention (
        key TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    CREATE TABLE subscriber_holds (
        instance TEXT PRIMARY KEY,
        at_seq BIGINT,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );",
];

/// Brings the database up to the newest schema; returns how many migrations this call applied.
pub(crate) fn migrate(client: &mut Client) -> Result<usize, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS cloudci_schema (version INTEGER NOT NULL)")?;
    let done: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM cloudci_schema", &[])?.get(0);
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO cloudci_schema (version) VALUES ($1)", &[&(i as i32 + 1)])?;
        applied += 1;
    }
    tx.commit()?;
    Ok(applied)
}
