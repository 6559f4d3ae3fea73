//! PostgreSQL, the store for more than one daemon (issue 17): connecting ([`connect`]) and the
//! schema ([`migrate`], from `migrations/postgres/`), applied by one daemon at a time under an
//! advisory lock. The store's SQL runs on it through [`super::sql::Conn`].
//!
//! `migrations/postgres/0001_init.sql` is the SQLite schema as its 14 migrations left it, plus the
//! leases and the daemons table; later changes to either schema need a migration in both.

use std::time::Duration;

use postgres::NoTls;

/// One change of the PostgreSQL schema; never edit a shipped one.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// The schema, in order: version N is `migrations/postgres/000N_*.sql`.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "0001_init",
    sql: include_str!("../../migrations/postgres/0001_init.sql"),
}];

/// The key of the transaction-scoped advisory lock each migration takes first, so one daemon at a
/// time migrates and the others wait, then find the work done. Any fixed number does; this one
/// is "nightshf" in ASCII.
pub const MIGRATION_LOCK_KEY: i64 = 0x6e69_6768_7473_6866;

/// The schema version this build writes and understands.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "`[store] url` {url:?} is not a PostgreSQL URL ({reason}): write it as \
         postgres://USER@HOST:PORT/DATABASE, without the password (it comes from PGPASSWORD or \
         `[store] password_file`)"
    )]
    Url { url: String, reason: String },
    #[error(
        "cannot connect to PostgreSQL at {url}: {reason}. Check that the server runs and takes \
         connections from this host, that the user and database exist, and the password (from \
         PGPASSWORD or `[store] password_file`)"
    )]
    Connect { url: String, reason: String },
    #[error(
        "PostgreSQL migration {version} ({name}) failed and was rolled back: {reason}. The user \
         of `[store] url` must be allowed to create tables in the database (its owner is)"
    )]
    Migration {
        version: i32,
        name: &'static str,
        reason: String,
    },
    #[error(
        "the PostgreSQL database is at schema version {found}, newer than this nightshift's \
         {known}: another daemon of a newer version migrated it; run that version here too"
    )]
    TooNew { found: i32, known: usize },
    #[error("PostgreSQL: {0}")]
    Db(String),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> PgError {
        PgError::Db(describe(&e))
    }
}

/// An error with its causes: tokio-postgres's own messages name only the kind ("db error"), the
/// server's words are in the source.
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The URL with any password in it replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    // Key-value form: host=… password=…
    if !url.contains("://") {
        return url
            .split_whitespace()
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = redact_query_password(tail);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => format!("{scheme}://{userinfo}@{host}{tail}"),
        },
        None => format!("{scheme}://{authority}{tail}"),
    }
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query = query
        .split('&')
        .map(|pair| {
            if pair.starts_with("password=") {
                "password=***"
            } else {
                pair
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{query}")
}

/// A connection to the database at `url` (`postgres://USER@HOST:PORT/DATABASE`, or libpq's
/// `key=value` form), with `password` if given (the caller reads it from PGPASSWORD or
/// `[store] password_file`; one in the URL is used when none is given). A wrong URL, an
/// unreachable server or a refused login is told here, naming the URL without its password.
///
/// Blocking: call it from a thread of the store's own (the writer, a reader), or in
/// `spawn_blocking`, never on the async runtime.
pub fn connect(url: &str, password: Option<&str>) -> Result<postgres::Client, PgError> {
    let shown = redact(url);
    let mut config: postgres::Config = url.parse().map_err(|e| PgError::Url {
        url: shown.clone(),
        reason: describe(&e),
    })?;
    if let Some(password) = password {
        config.password(password);
    }
    config
        .application_name("nightshift")
        .connect_timeout(Duration::from_secs(10));
    config.connect(NoTls).map_err(|e| PgError::Connect {
        url: shown,
        reason: describe(&e),
    })
}

/// Limits how long the writer's connection may sit in an open transaction: a daemon paused
/// mid-transaction (SIGSTOP, a frozen VM) would hold its rows' locks and stall every other daemon;
/// the server ends such a session after this, and the daemon connects again when it resumes.
pub const IDLE_IN_TRANSACTION: &str = "SET idle_in_transaction_session_timeout = '10s'";

/// Brings the schema to this build's version: each migration not yet in `schema_migrations` is
/// applied in a transaction of its own, which first takes the advisory lock
/// [`MIGRATION_LOCK_KEY`], so daemons starting together migrate one at a time and each change is
/// applied once. Returns the schema version. A database migrated by a newer nightshift is refused.
pub fn migrate(client: &mut postgres::Client) -> Result<usize, PgError> {
    let lock = format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})");
    let create = "CREATE TABLE IF NOT EXISTS schema_migrations (
                      version    INT PRIMARY KEY,
                      applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                  )";
    // Under the lock too: CREATE TABLE IF NOT EXISTS is not safe against itself in two sessions.
    let mut tx = client.transaction()?;
    tx.batch_execute(&lock)?;
    tx.batch_execute(create)?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    tx.commit()?;
    if found as usize > MIGRATIONS.len() {
        return Err(PgError::TooNew {
            found,
            known: MIGRATIONS.len(),
        });
    }
    for migration in MIGRATIONS {
        let mut tx = client.transaction()?;
        tx.batch_execute(&lock)?;
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&migration.version],
            )?
            .is_some();
        if applied {
            tx.rollback()?;
            continue;
        }
        let failed = |e: postgres::Error| PgError::Migration {
            version: migration.version,
            name: migration.name,
            reason: describe(&e),
        };
        tx.batch_execute(migration.sql).map_err(failed)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
            &[&migration.version],
        )
        .map_err(failed)?;
        tx.commit().map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied a PostgreSQL migration"
        );
    }
    let version: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    Ok(version as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, i + 1, "{}", migration.name);
            assert!(
                migration
                    .name
                    .starts_with(&format!("{:04}_", migration.version)),
                "{} does not start with its version",
                migration.name
            );
        }
        assert_eq!(schema_version(), MIGRATIONS.len());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://ns:secret@db:5432/nightshift"),
            "postgres://ns:***@db:5432/nightshift"
        );
        assert_eq!(
            redact("postgresql://ns@db/nightshift?sslmode=disable&password=secret"),
            "postgresql://ns@db/nightshift?sslmode=disable&password=***"
        );
        assert_eq!(
            redact("postgres://ns:p@ss@db"),
            "postgres://ns:***@db",
            "the host follows the last @"
        );
        assert_eq!(
            redact("host=db user=ns password=secret dbname=x"),
            "host=db user=ns password=*** dbname=x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn a_bad_url_says_how_to_write_one() {
        let err = connect("postgres://ns:secret@db:notaport/x", None)
            .err()
            .expect("a bad port");
        let text = err.to_string();
        assert!(matches!(err, PgError::Url { .. }), "{text}");
        assert!(
            text.contains("postgres://USER@HOST:PORT/DATABASE"),
            "{text}"
        );
        assert!(text.contains("PGPASSWORD"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn a_server_not_there_is_told_with_the_url() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        let url = format!("postgres://ns:secret@127.0.0.1:{port}/x");
        let err = connect(&url, None).err().expect("nothing there");
        let text = err.to_string();
        assert!(matches!(err, PgError::Connect { .. }), "{text}");
        assert!(
            text.contains(&format!("postgres://ns:***@127.0.0.1:{port}/x")),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
        assert!(text.contains("`[store] password_file`"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
