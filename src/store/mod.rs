//! SQLite, the single source of truth.
//!
//! One thread owns the only read-write connection. Async code hands it closures with
//! [`Store::call`]; the thread runs whatever is queued in one transaction (each closure inside its
//! own savepoint, so a failing one rolls back alone), commits, and only then answers each caller.
//! A caller that got `Ok` knows its change is committed. The SQL itself lives in plain synchronous
//! functions over `&Conn` ([`sql::Conn`]: SQLite or PostgreSQL) in the submodules, testable on an
//! in-memory database.
//!
//! The CLI opens the same file read-only ([`open_read_only`]); WAL lets it read while the daemon writes.

pub mod attempts;
pub mod batches;
pub mod budget;
pub mod facts;
pub mod holds;
pub mod items;
pub mod job_status;
pub mod jobs;
pub mod leases;
pub mod ledger;
pub mod pg;
pub mod quota;
pub mod results;
pub mod retry;
pub mod routes;
pub mod schedules;
pub mod sql;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};
pub use sql::Conn;
use tokio::sync::{mpsc, oneshot};

/// The schema, one file per change; never edit a shipped one.
static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(include_str!("../../migrations/0001_init.sql")),
        M::up(include_str!("../../migrations/0002_batches.sql")),
        M::up(include_str!("../../migrations/0003_quota.sql")),
        M::up(include_str!("../../migrations/0004_ledger.sql")),
        M::up(include_str!("../../migrations/0005_budgets.sql")),
        M::up(include_str!("../../migrations/0006_daemon.sql")),
        M::up(include_str!("../../migrations/0007_results.sql")),
        M::up(include_str!("../../migrations/0008_learned.sql")),
        M::up(include_str!("../../migrations/0009_cache_ttl.sql")),
        M::up(include_str!("../../migrations/0010_cache_prefix.sql")),
        M::up(include_str!("../../migrations/0011_cache_saved.sql")),
        M::up(include_str!("../../migrations/0012_pack_by_prefix.sql")),
        M::up(include_str!("../../migrations/0013_operator.sql")),
        M::up(include_str!("../../migrations/0014_routes.sql")),
        M::up(include_str!("../../migrations/0015_leases.sql")),
    ])
});

/// The schema version this build writes and understands.
pub fn schema_version() -> usize {
    15
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot migrate the database schema: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error(
        "the database at {path} does not exist yet: start the daemon (`nightshift run`) with this config first"
    )]
    Missing { path: PathBuf },
    #[error(
        "cannot read {path}: permission denied (on the file or a folder above it); run nightshift as its service user (`sudo -u nightshift nightshift ...`) or join its `[daemon] readers_group` (see \"Who can submit, spend and read\" in the README)"
    )]
    Unreadable { path: PathBuf },
    #[error(
        "cannot change {path}: permission denied; this command writes to the database, so run it as nightshift's service user (`sudo -u nightshift nightshift ...`): a `[daemon] readers_group` may only read"
    )]
    Unwritable { path: PathBuf },
    #[error(
        "the database at {path} has schema version {found}, newer than this nightshift knows ({known}): upgrade nightshift"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("the database writer has stopped")]
    Closed,
    #[error("committing to the database failed: {0}")]
    Commit(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Postgres(#[from] pg::PgError),
    #[error("the query found no row")]
    NoRows,
    #[error("item {0} is no longer pending")]
    NotPending(i64),
    #[error(
        "this daemon's lease on the item expired and another daemon took it back; its outcome is not recorded (the item is sent again)"
    )]
    LeaseLost,
    #[error("column {column} of a row read from the database: {error}")]
    Type { column: usize, error: String },
    #[error("PostgreSQL: {message}")]
    Pg {
        message: String,
        /// The server's SQLSTATE, as `23505` for a unique violation.
        code: Option<String>,
    },
}

impl StoreError {
    /// A PostgreSQL error, with the server's own words (the client's message names only the kind).
    pub fn pg(e: postgres::Error) -> StoreError {
        let code = e.code().map(|c| c.code().to_owned());
        StoreError::Pg {
            message: pg::describe(&e),
            code,
        }
    }

    /// The same, naming the statement that failed.
    pub fn pg_in(e: postgres::Error, sql: &str) -> StoreError {
        match StoreError::pg(e) {
            StoreError::Pg { message, code } => StoreError::Pg {
                message: format!(
                    "{message} (in: {})",
                    sql.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
                code,
            },
            other => other,
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        StoreError::pg(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where the store is: SQLite's file (the default) or a PostgreSQL database (`[store] url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The database file, `data_dir/nightshift.db`.
    Sqlite(PathBuf),
    Postgres(PgTarget),
}

/// A PostgreSQL database: the URL (without a password) and the file holding the password, else
/// PGPASSWORD's (read by the CLI at start).
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    url: String,
    password_file: Option<PathBuf>,
    pgpassword: Option<String>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &pg::redact(&self.url))
            .field("password_file", &self.password_file)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// A new connection, with the password read now.
    fn connect(&self) -> Result<postgres::Client> {
        Ok(pg::connect(&self.url, self.password()?.as_deref())?)
    }

    /// Writes a consistent copy of the database to `to` with `pg_dump --format=custom`
    /// (restored with `pg_restore`), while daemons run; the password goes to it in its
    /// environment, never on its command line.
    fn dump(&self, to: &Path) -> Result<()> {
        let mut command = std::process::Command::new("pg_dump");
        command
            .arg("--format=custom")
            .arg("--no-password")
            .arg("--file")
            .arg(to)
            .arg("--dbname")
            .arg(&self.url)
            .stdin(std::process::Stdio::null());
        if let Some(password) = self.password()? {
            command.env("PGPASSWORD", password);
        }
        let out = command.output().map_err(|e| {
            StoreError::Invalid(format!(
                "cannot run pg_dump ({e}): install PostgreSQL's client programs (Debian:                  postgresql-client) to back up a PostgreSQL store"
            ))
        })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(to);
            return Err(StoreError::Invalid(format!(
                "pg_dump failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The password: `password_file`'s, read now, else PGPASSWORD's.
    fn password(&self) -> Result<Option<String>> {
        let password = match &self.password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| {
                        StoreError::Invalid(format!(
                            "cannot read the PostgreSQL password from {} (`[store] \
                             password_file`): {e}; nightshift's user must be able to read it",
                            file.display()
                        ))
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            None => self.pgpassword.clone(),
        };
        Ok(password)
    }
}

impl PgTarget {
    /// The writer's connection, the schema migrated. Several daemons may share the store: each
    /// holds what it works on under leases (`leases`).
    fn connect_writer(&self) -> Result<Conn> {
        let mut client = self.connect()?;
        pg::migrate(&mut client)?;
        client
            .batch_execute(pg::IDLE_IN_TRANSACTION)
            .map_err(StoreError::pg)?;
        Ok(Conn::from(client))
    }
}

impl Location {
    /// `[store] url` if set, else the SQLite file `db_path`.
    pub fn new(
        db_path: PathBuf,
        url: Option<&str>,
        password_file: Option<&Path>,
        pgpassword: Option<&str>,
    ) -> Location {
        match url {
            Some(url) => Location::Postgres(PgTarget {
                url: url.to_owned(),
                password_file: password_file.map(Path::to_owned),
                pgpassword: pgpassword.map(str::to_owned),
            }),
            None => Location::Sqlite(db_path),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(target) => f.write_str(&pg::redact(&target.url)),
        }
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Location {
        Location::Sqlite(path.to_owned())
    }
}
impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Location {
        Location::Sqlite(path.clone())
    }
}
impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Location {
        Location::Sqlite(path)
    }
}
impl From<&Location> for Location {
    fn from(at: &Location) -> Location {
        at.clone()
    }
}

/// What the writer thread does with an op after the commit: answer its caller.
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
/// An op: runs on the writer thread inside a savepoint; says whether it succeeded. Given no
/// connection (no transaction could begin), it does not run, and its reply says why.
type Op = Box<dyn FnOnce(Option<&Conn>) -> (bool, Reply) + Send>;

/// Most ops run in one transaction before the writer commits and answers (SQLite: one writer,
/// whose commits cost a sync each).
const MAX_OPS_PER_COMMIT: usize = 256;

/// The ops per transaction on `conn`: on PostgreSQL each op commits alone. Several daemons write
/// to it at once, and a group of unrelated ops would take its row locks in an order no other
/// daemon's group follows (a deadlock PostgreSQL would end by failing one); one op takes them in
/// its own order. Its commits are cheap beside SQLite's, and run beside the other daemons'.
fn ops_per_commit(conn: &Conn) -> usize {
    match conn.dialect() {
        sql::Dialect::Sqlite => MAX_OPS_PER_COMMIT,
        sql::Dialect::Postgres => 1,
    }
}

/// What the writer thread receives.
enum Msg {
    Op(Op),
    /// An op that runs in a transaction of its own, without a savepoint: for large changes (a
    /// chunk of batch results), whose pages a savepoint would first copy aside. Its commit does
    /// not wait for the disk (`synchronous = NORMAL`): only a power cut can undo it, and only
    /// until the next commit of any other op, or the next checkpoint, syncs the log. A sync can
    /// wait for other files' pending writes too (ext4 orders them), which under a stream of
    /// large changes (and the checkpoints and results files they cause) costs more than the
    /// changes. So only for changes that can be made again from where they came from.
    Alone(Op),
    /// Finish what was sent before, then stop; later calls get [`StoreError::Closed`].
    Close,
}

/// The handle async code uses; cheap to clone.
#[derive(Clone)]
pub struct Store {
    ops: mpsc::UnboundedSender<Msg>,
    writer: std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    location: std::sync::Arc<Location>,
    /// Read-only connections kept between [`Store::read`]s.
    readers: std::sync::Arc<std::sync::Mutex<Vec<Conn>>>,
}

impl Store {
    /// Opens (creating if needed) the database `at`, applies migrations, and starts the writer.
    /// Blocking (PostgreSQL is connected to here): call it off the async runtime.
    pub fn open(at: impl Into<Location>) -> Result<Store> {
        let location = at.into();
        let (conn, checkpoint) = match &location {
            Location::Sqlite(path) => (Conn::from(open_sqlite_writer(path)?), Some(path.clone())),
            Location::Postgres(target) => (target.connect_writer()?, None),
        };
        // A lost PostgreSQL connection is made again before the next transaction.
        let reconnect: Option<Reconnect> = match &location {
            Location::Sqlite(_) => None,
            Location::Postgres(target) => {
                let target = target.clone();
                Some(Box::new(move || target.connect_writer()))
            }
        };
        let (ops, rx) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("nightshift-store".into())
            .spawn(move || {
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let checkpointer = checkpoint.and_then(|db| {
                    std::thread::Builder::new()
                        .name("nightshift-checkpoint".into())
                        .spawn(move || checkpoints(&db, &stopped))
                        .ok()
                });
                writer_loop(conn, rx, reconnect);
                drop(stop);
                if let Some(handle) = checkpointer {
                    let _ = handle.join();
                }
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the database writer: {e}")))?;
        Ok(Store {
            ops,
            writer: std::sync::Arc::new(std::sync::Mutex::new(Some(writer))),
            location: std::sync::Arc::new(location),
            readers: Default::default(),
        })
    }

    /// Runs `f` on a read-only connection, off the writer thread (reading thousands of rows
    /// there would hold up every write); it sees what is committed.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Conn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (readers, location) = (self.readers.clone(), self.location.clone());
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let kept = crate::lock(&readers).pop();
            let conn = match kept {
                Some(conn) => conn,
                None => open_read_only(&*location)?,
            };
            let out = f(&conn);
            if !conn.is_lost() {
                crate::lock(&readers).push(conn);
            }
            out
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` in a transaction on the writer thread; answers after the commit.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Conn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(f).await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `f` for the writer thread to run in a transaction of its own (committed, or rolled
    /// back whole if `f` fails), and returns at once: for an op that changes many rows, which
    /// needs no savepoint to fail alone. The receiver gets the answer after the commit; queuing
    /// the next such op before it comes keeps the writer going from one to the next.
    ///
    /// A power cut (not a crash: the system keeps what was written) may undo the commit until
    /// the next commit of another op or checkpoint, so `f` must be a change that can be made
    /// again from its source: a chunk of batch results, which the API keeps for 29 days (the
    /// batch is marked applied by an ordinary, synced op, after its chunks).
    pub fn submit_alone<T, F>(&self, f: F) -> oneshot::Receiver<Result<T>>
    where
        F: FnOnce(&Conn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // If the writer is gone the op (and its sender) is dropped: the receiver then sees Closed.
        let _ = self.ops.send(Msg::Alone(Self::op(f, tx)));
        rx
    }

    /// Queues `f` for the writer thread and returns at once; the receiver gets the answer after
    /// the commit. For blocking code (intake) that keeps one chunk committing while it parses the next.
    pub fn submit<T, F>(&self, f: F) -> oneshot::Receiver<Result<T>>
    where
        F: FnOnce(&Conn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op = Self::op(f, tx);
        // If the writer is gone the op (and its sender) is dropped: the receiver then sees Closed.
        let _ = self.ops.send(Msg::Op(op));
        rx
    }

    /// `f` as the writer runs it: in the caller's span, answering `tx` after the commit.
    fn op<T, F>(f: F, tx: oneshot::Sender<Result<T>>) -> Op
    where
        F: FnOnce(&Conn) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        // The caller's span (a job, an item, a batch) goes with the op to the writer thread, so
        // what the SQL logs there says whose it was.
        let span = tracing::Span::current();
        Box::new(move |conn| {
            let result = match conn {
                Some(conn) => span.in_scope(|| f(conn)),
                // Answered by the reply, with why no transaction began.
                None => Err(StoreError::Closed),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit_error| {
                let answer = match commit_error {
                    Some(message) => Err(StoreError::Commit(message.to_owned())),
                    None => result,
                };
                let _ = tx.send(answer);
            });
            (ok, reply)
        })
    }

    /// Stops the writer once every op sent before is done, and waits for it. Clones that outlive
    /// this (a task abandoned at shutdown) get [`StoreError::Closed`].
    pub async fn close(self) {
        // The writer closes last: its close checkpoints the WAL and removes it.
        crate::lock(&self.readers).clear();
        let writer = crate::lock(&self.writer).take();
        let _ = self.ops.send(Msg::Close);
        if let Some(handle) = writer {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// How often the WAL is copied back into the database beside the writer.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// SQLite's writer connection, tuned for it.
fn open_sqlite_writer(path: &Path) -> Result<Connection> {
    let conn = open_read_write(path)?;
    // The writer's page cache: 32 MiB, not SQLite's 2 MiB, so that a chunk of batch results
    // (thousands of rows and their index entries) is changed in memory and written once.
    conn.pragma_update(None, "cache_size", -32_768)?;
    // Checkpoints run beside the writer (see `checkpoints`). Under a stream of commits they
    // never catch up with the last one, and the WAL is only started over from its head by
    // a commit that finds it all copied: past 32 MiB, the writer checkpoints what is left
    // itself (little: the other thread copied the rest). Else the WAL grows by every byte
    // written, each commit lands on new blocks of the file, and the kernel zeroes and
    // allocates a page for each (a third of the writer's time applying batch results).
    conn.pragma_update(None, "wal_autocheckpoint", 8_192)?;
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    Ok(conn)
}

/// Copies committed pages from the WAL into the database file on a connection of its own, every
/// [`CHECKPOINT_EVERY`], until `stop` is dropped: the writer's commits then only append to the
/// WAL (the copying and its sync run on another core). Passive: it never waits for, or blocks,
/// the writer or a reader; what it cannot copy now it copies next time.
fn checkpoints(path: &Path, stop: &std::sync::mpsc::Receiver<()>) {
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "no checkpoints beside the writer; its commits make them");
            return;
        }
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", (), |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint put off");
        }
    }
}

/// Makes the writer's connection again, when it was lost.
type Reconnect = Box<dyn Fn() -> Result<Conn> + Send>;

fn writer_loop(mut conn: Conn, mut rx: mpsc::UnboundedReceiver<Msg>, reconnect: Option<Reconnect>) {
    let mut group: Vec<Op> = Vec::with_capacity(MAX_OPS_PER_COMMIT);
    // Ops to run alone, in the order sent. Ops sent meanwhile go first: a small change (an
    // answer, a result written) never waits behind more than one large one.
    let mut alone: std::collections::VecDeque<Op> = std::collections::VecDeque::new();
    let mut closing = false;
    loop {
        if alone.is_empty() {
            if closing {
                break;
            }
            match rx.blocking_recv() {
                Some(Msg::Op(op)) => group.push(op),
                Some(Msg::Alone(op)) => alone.push_back(op),
                Some(Msg::Close) | None => break,
            }
        }
        while !closing && group.len() < ops_per_commit(&conn) {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => group.push(op),
                Ok(Msg::Alone(op)) => alone.push_back(op),
                Ok(Msg::Close) => closing = true,
                Err(_) => break,
            }
        }
        if conn.is_lost()
            && let Some(reconnect) = &reconnect
        {
            // Until it is back, ops fail (their callers try again later, as for a busy database).
            match reconnect() {
                Ok(again) => {
                    tracing::warn!("the connection to the database was lost, and is made again");
                    conn = again;
                }
                Err(e) => tracing::error!(error = %e, "the database cannot be reached"),
            }
        }
        if group.len() == 1
            && let Some(op) = group.pop()
        {
            // Alone in its transaction: no savepoint needed (two round trips fewer).
            run_in_own_transaction(&conn, op);
        } else if !group.is_empty() {
            run_group(&conn, group.drain(..));
        }
        if let Some(op) = alone.pop_front() {
            run_alone(&conn, op);
        }
    }
}

/// Runs ops in one transaction, each in its own savepoint (a failing one rolls back alone),
/// commits, then answers each.
fn run_group(conn: &Conn, ops: impl Iterator<Item = Op>) {
    // Each reply, with the error of its own op's savepoint if that failed.
    let mut replies: Vec<(Reply, Option<String>)> = Vec::new();
    if let Err(e) = conn.execute_batch("BEGIN") {
        tracing::error!(error = %e, "opening a transaction failed");
        let why = e.to_string();
        ops.for_each(|op| refuse(op, &why));
        return;
    }
    for op in ops {
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            tracing::error!(error = %e, "opening a savepoint failed");
            refuse(op, &e.to_string());
            continue;
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(Some(conn))));
        match ran {
            Ok((true, reply)) => {
                let own_error = conn
                    .execute_batch("RELEASE SAVEPOINT op")
                    .err()
                    .map(|e| e.to_string());
                replies.push((reply, own_error));
            }
            Ok((false, reply)) => {
                roll_back_savepoint(conn);
                replies.push((reply, None));
            }
            Err(_) => {
                roll_back_savepoint(conn);
                tracing::error!("a database operation panicked; it was rolled back");
            }
        }
    }
    let commit_error = commit(conn);
    for (reply, own_error) in replies {
        reply(commit_error.as_deref().or(own_error.as_deref()));
    }
}

/// Answers an op that could not run (no transaction or savepoint began) with why, as a failed
/// commit: its caller tries again, as after any commit that failed (a dropped op would say the
/// store had stopped).
fn refuse(op: Op, why: &str) {
    let (_, reply) = op(None);
    reply(Some(why));
}

fn roll_back_savepoint(conn: &Conn) {
    if let Err(e) = conn.execute_batch("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op") {
        tracing::error!(error = %e, "rolling back a savepoint failed");
    }
}

/// Commits the open transaction; on failure rolls it back and says why.
fn commit(conn: &Conn) -> Option<String> {
    let error = conn.execute_batch("COMMIT").err().map(|e| e.to_string());
    if let Some(message) = &error {
        tracing::error!(error = %message, "database commit failed");
        // A failed COMMIT may leave the transaction open (SQLite, when busy).
        let _ = conn.execute_batch("ROLLBACK");
    }
    error
}

/// Runs one op in a transaction of its own: committed if it succeeded, rolled back if not.
fn run_alone(conn: &Conn, op: Op) {
    let Some(sqlite) = conn.sqlite() else {
        return run_in_own_transaction(conn, op);
    };
    // Committed without waiting for the disk (see `Msg::Alone`); back to FULL for the others.
    if let Err(e) = sqlite.pragma_update(None, "synchronous", "NORMAL") {
        tracing::warn!(error = %e, "a large change is committed with a sync");
    }
    run_in_own_transaction(conn, op);
    if let Err(e) = sqlite.pragma_update(None, "synchronous", "FULL") {
        tracing::error!(error = %e, "cannot set the database back to syncing each commit");
    }
}

fn run_in_own_transaction(conn: &Conn, op: Op) {
    if let Err(e) = conn.execute_batch("BEGIN") {
        tracing::error!(error = %e, "opening a transaction failed");
        return refuse(op, &e.to_string());
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(Some(conn)))) {
        Ok((true, reply)) => reply(commit(conn).as_deref()),
        Ok((false, reply)) => {
            roll_back(conn);
            // The op's own error is its answer.
            reply(None);
        }
        Err(_) => {
            roll_back(conn);
            tracing::error!("a database operation panicked; it was rolled back");
        }
    }
}

fn roll_back(conn: &Conn) {
    if let Err(e) = conn.execute_batch("ROLLBACK") {
        tracing::error!(error = %e, "rolling back a transaction failed");
    }
}

/// Rows per statement when many change at once (a chunk of batch results is thousands): a
/// statement over a group of rows costs far less than a statement each.
pub(crate) const ROWS_PER_STATEMENT: usize = 100;

/// Runs `each` over `rows` a group of at most [`ROWS_PER_STATEMENT`] at a time, with the SQL
/// `sql` makes for a group of that size (made once for all the full groups).
pub(crate) fn in_groups<T>(
    rows: &[T],
    sql: impl Fn(usize) -> String,
    mut each: impl FnMut(&str, &[T]) -> Result<()>,
) -> Result<()> {
    let mut full = None;
    for group in rows.chunks(ROWS_PER_STATEMENT) {
        if group.len() == ROWS_PER_STATEMENT {
            each(full.get_or_insert_with(|| sql(ROWS_PER_STATEMENT)), group)?;
        } else {
            each(&sql(group.len()), group)?;
        }
    }
    Ok(())
}

/// A VALUES list of `rows` rows of `cols` parameters each, numbered after the statement's own
/// `?1`…`?after`: `(?3, ?4), (?5, ?6)` for 2, 2, 2. For an INSERT, whose columns give the
/// parameters their types.
pub(crate) fn value_rows(rows: usize, cols: usize, after: usize) -> String {
    value_rows_as(rows, &vec![""; cols], after)
}

/// [`value_rows`] with each parameter cast to its column's type in `types` (none for ""): for a
/// `FROM (VALUES …)` list, whose parameters PostgreSQL would otherwise take as text.
/// `(CAST(?2 AS INTEGER), CAST(?3 AS TEXT))` for 1, ["INTEGER", "TEXT"], 1.
pub(crate) fn value_rows_as(rows: usize, types: &[&str], after: usize) -> String {
    use std::fmt::Write;
    let cols = types.len();
    let mut out = String::with_capacity(rows * cols * 24);
    for row in 0..rows {
        out.push_str(if row == 0 { "(" } else { ", (" });
        for (col, ty) in types.iter().enumerate() {
            let sep = if col == 0 { "" } else { ", " };
            let n = after + row * cols + col + 1;
            let _ = match *ty {
                "" => write!(out, "{sep}?{n}"),
                ty => write!(out, "{sep}CAST(?{n} AS {ty})"),
            };
        }
        out.push(')');
    }
    out
}

/// Opens the database for writing, sets the pragmas (read back, not assumed) and migrates.
pub fn open_read_write(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Invalid(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    check_not_newer(&conn, path)?;
    backup_before_migrating(&conn, path)?;
    MIGRATIONS.to_latest(&mut conn)?;
    Ok(conn)
}

/// Writes a consistent copy of the store to `to` while daemons run: SQLite's file with `VACUUM
/// INTO` through a read-only connection, PostgreSQL's database with `pg_dump --format=custom`.
/// Refuses to overwrite a file.
pub fn backup(at: &Location, to: &Path) -> Result<()> {
    if to.exists() {
        return Err(StoreError::Invalid(format!(
            "{} exists; give a new file name (a backup never overwrites)",
            to.display()
        )));
    }
    let db = match at {
        Location::Sqlite(db) => db,
        Location::Postgres(target) => return target.dump(to),
    };
    let conn = open_read_only(db)?;
    conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])?;
    Ok(())
}

/// Before migrations change an existing database, a consistent copy of it goes beside it as
/// `nightshift.db.v<old>.bak` (`VACUUM INTO`), so an upgrade can be undone by putting it back.
/// Returns the copy's path, if one was made.
pub fn backup_before_migrating(conn: &Connection, path: &Path) -> Result<Option<PathBuf>> {
    let version: i64 = conn.query_row("PRAGMA user_version", (), |r| r.get(0))?;
    if version == 0 || version as usize >= schema_version() {
        return Ok(None); // a new database, or nothing to migrate
    }
    let name = path
        .file_name()
        .map_or("nightshift.db".into(), |n| n.to_string_lossy().into_owned());
    let backup = path.with_file_name(format!("{name}.v{version}.bak"));
    // Into a temporary file first: an older copy of that name is replaced only by a whole one.
    let partial = path.with_file_name(format!("{name}.v{version}.bak.partial"));
    let io = |what: &str, e: std::io::Error| {
        StoreError::Invalid(format!("cannot {what} the copy {}: {e}", backup.display()))
    };
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(|e| io("start", e))?;
    }
    conn.execute("VACUUM INTO ?1", [partial.to_string_lossy()])?;
    std::fs::rename(&partial, &backup).map_err(|e| io("finish", e))?;
    tracing::info!(
        from = version,
        to = schema_version(),
        backup = %backup.display(),
        "migrating the database; a copy of it as it was is kept"
    );
    Ok(Some(backup))
}

/// Opens the database for reading only; says plainly when there is none yet, and when there is
/// one this user may not read.
pub fn open_read_only(at: impl Into<Location>) -> Result<Conn> {
    let location = at.into();
    match &location {
        Location::Sqlite(path) => open_sqlite_read_only(path),
        Location::Postgres(target) => {
            let conn = open_postgres_checked(target)?;
            conn.execute_batch("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")?;
            Ok(conn)
        }
    }
}

/// A connection to the PostgreSQL database `target`, whose schema must be this build's.
fn open_postgres_checked(target: &PgTarget) -> Result<Conn> {
    let conn = Conn::from(target.connect()?);
    let at = pg::redact(&target.url);
    let found: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            (),
            |r| r.get(0),
        )
        .map_err(|_| {
            StoreError::Invalid(format!(
                "the PostgreSQL database {at} has no nightshift schema yet: start the daemon \
             (`nightshift run`) with this config first"
            ))
        })?;
    let known = pg::schema_version();
    if found as usize > known {
        return Err(StoreError::Invalid(format!(
            "the PostgreSQL database {at} has schema version {found}, newer than this \
             nightshift knows ({known}): upgrade nightshift"
        )));
    }
    if (found as usize) < known {
        return Err(StoreError::Invalid(format!(
            "the PostgreSQL database {at} has schema version {found}, older than this \
             nightshift's ({known}); start the daemon of this version (`nightshift run`) once \
             to migrate it"
        )));
    }
    Ok(conn)
}

/// SQLite's file, read-only.
fn open_sqlite_read_only(path: &Path) -> Result<Conn> {
    // `Path::exists` is false for a file in a folder this user may not enter (EACCES), which
    // then read "does not exist yet: start the daemon" to someone who only lacked permission.
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(StoreError::Unreadable {
                path: path.to_owned(),
            });
        }
        Err(_) => {
            return Err(StoreError::Missing {
                path: path.to_owned(),
            });
        }
    }
    // SQLite would say only "unable to open database file" of a file this user may not read.
    if denied(path, rustix::fs::Access::READ_OK) {
        return Err(StoreError::Unreadable {
            path: path.to_owned(),
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let open = |conn: Connection| -> Result<(Connection, i64)> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        check_not_newer(&conn, path)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok((conn, version))
    };
    let (conn, version) = match open(Connection::open_with_flags(path, flags)?) {
        // A reader who may not write the folder (a member of `[daemon] readers_group`) cannot
        // make the WAL's index when no daemon holds it open: with no daemon running, the
        // database is read as it is on disk (a daemon that stopped in order folded its WAL in;
        // after a crash, what the WAL still holds shows once a daemon runs again).
        Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
            if (e.code == rusqlite::ErrorCode::ReadOnly
                || e.code == rusqlite::ErrorCode::CannotOpen)
                && no_daemon_holds(path) =>
        {
            let escaped = path
                .display()
                .to_string()
                .replace('%', "%25")
                .replace('?', "%3f")
                .replace('#', "%23");
            let uri = format!("file:{escaped}?immutable=1");
            open(Connection::open_with_flags(
                uri,
                flags | OpenFlags::SQLITE_OPEN_URI,
            )?)?
        }
        other => other?,
    };
    if version == 0 {
        return Err(StoreError::Missing {
            path: path.to_owned(),
        });
    }
    if (version as usize) < schema_version() {
        return Err(StoreError::Invalid(format!(
            "the database at {} has schema version {version}, older than this nightshift's ({}); \
             start the daemon of this version (`nightshift run`) once to migrate it",
            path.display(),
            schema_version()
        )));
    }
    Ok(Conn::from(conn))
}

/// Whether this user (its effective ids, as an open would be judged) is denied `access` to `path`;
/// false for a file that is not there. Asked of the kernel without opening the file: closing a
/// descriptor of the database in a process that also has it open through SQLite (the daemon
/// reading beside its writer) would drop that process's POSIX locks on it.
fn denied(path: &Path, access: rustix::fs::Access) -> bool {
    rustix::fs::accessat(rustix::fs::CWD, path, access, rustix::fs::AtFlags::EACCESS)
        == Err(rustix::io::Errno::ACCESS)
}

/// Whether no daemon holds the data folder of the database at `path` (its lock on the folder): only
/// then is the file on disk the whole database, with no WAL being written beside it.
fn no_daemon_holds(path: &Path) -> bool {
    path.parent()
        .and_then(|dir| std::fs::File::open(dir).ok())
        .is_some_and(|dir| dir.try_lock_shared().is_ok())
}

/// Asks the daemon to cancel a job (`nightshift cancel`): the CLI's one write, a row the daemon
/// carries out. Returns false if there is no such job.
pub fn request_cancel(at: &Location, job: &str) -> Result<bool> {
    let conn = open_for_cli_write(at)?;
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM jobs WHERE name = ?1)",
        [job],
        |r| r.get(0),
    )?;
    if exists {
        conn.execute(
            "INSERT INTO cancel_requests (job_name, at) VALUES (?1, ?2)",
            sql::params![job, now_ms()],
        )?;
    }
    Ok(exists)
}

/// Asks the daemon to retry items of a job (`nightshift retry`). None if there is no such job;
/// else the request's id, for [`retry_outcome`].
pub fn request_retry(at: &Location, job: &str, choice: &retry::Choice) -> Result<Option<i64>> {
    let conn = open_for_cli_write(at)?;
    if jobs::find_by_name(&conn, job)?.is_none() {
        return Ok(None);
    }
    retry::request(&conn, job, choice, now_ms()).map(Some)
}

/// What the daemon made of a retry request, once it has.
pub fn retry_outcome(at: &Location, request_id: i64) -> Result<Option<String>> {
    retry::outcome(&open_read_only(at)?, request_id)
}

/// `nightshift clean`: see [`jobs::clean`] and, with `purge`, [`jobs::purge`]. Returns the jobs
/// cleared (name, source path).
pub fn clean(at: &Location, before: i64, purge: bool) -> Result<Vec<(String, String)>> {
    let conn = open_for_cli_write(at)?;
    // Outside the transaction (it is a no-op inside one): the purge's cascades need it.
    if conn.sqlite().is_some() {
        conn.execute_batch("PRAGMA foreign_keys = ON")?;
    }
    conn.transaction(|tx| {
        if purge {
            jobs::purge(tx, before)
        } else {
            Ok(jobs::clean(tx, before, now_ms())?
                .into_iter()
                .map(|name| (name, String::new()))
                .collect())
        }
    })
}

/// What `nightshift pause` / `resume` names: a job (by name) or a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOn {
    Job(String),
    Tenant(String),
}

/// `nightshift pause`: holds a job or a tenant (see [`holds`]); with `cancel_batches` its
/// batches under way are canceled by the daemon. None if there is no such job; else whether it
/// was not held already.
pub fn pause(at: &Location, on: &HoldOn, by: &str, cancel_batches: bool) -> Result<Option<bool>> {
    on_hold_target(at, on, |tx, target| {
        holds::hold(tx, target, by, cancel_batches, now_ms())
    })
}

/// `nightshift resume`: lets a job or a tenant go. None if there is no such job; else whether it
/// was held.
pub fn resume(at: &Location, on: &HoldOn) -> Result<Option<bool>> {
    on_hold_target(at, on, holds::release)
}

/// Runs `f` on what `on` names, in one transaction of the CLI's; None if it names no job.
fn on_hold_target(
    at: &Location,
    on: &HoldOn,
    f: impl FnOnce(&Conn, &holds::Target) -> Result<bool>,
) -> Result<Option<bool>> {
    let conn = open_for_cli_write(at)?;
    conn.transaction(|tx| {
        let target = match on {
            HoldOn::Job(name) => jobs::find_by_name(tx, name)?.map(|j| holds::Target::Job(j.id)),
            HoldOn::Tenant(tenant) => Some(holds::Target::Tenant(tenant.clone())),
        };
        match target {
            Some(target) => f(tx, &target).map(Some),
            None => Ok(None),
        }
    })
}

/// Removes a recurring job's schedule (`nightshift unschedule`); runs already taken in go on.
/// Returns whether there was one.
pub fn remove_schedule(at: &Location, name: &str) -> Result<bool> {
    let conn = open_for_cli_write(at)?;
    schedules::remove(&conn, name)
}

/// A short write from the CLI beside the running daemon (WAL lets both in; a busy timeout waits
/// for the daemon's transaction). Only for a database of this build's schema.
fn open_for_cli_write(at: &Location) -> Result<Conn> {
    match at {
        Location::Sqlite(path) => open_sqlite_for_cli_write(path),
        Location::Postgres(target) => open_postgres_checked(target),
    }
}

fn open_sqlite_for_cli_write(path: &Path) -> Result<Conn> {
    // Says plainly when there is no database, one of another schema version, or one this user
    // may not read.
    drop(open_read_only(path)?);
    // And one this user may read but not change (a member of `[daemon] readers_group`): SQLite
    // would say "attempt to write a readonly database", naming neither the file nor the fix. The
    // log and the shared-memory index beside it, when the daemon keeps them, are written too.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let beside = ["-wal", "-shm"].map(|suffix| path.with_file_name(format!("{name}{suffix}")));
    let write = rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK;
    if std::iter::once(path)
        .chain(beside.iter().map(PathBuf::as_path))
        .any(|file| denied(file, write))
    {
        return Err(StoreError::Unwritable {
            path: path.to_owned(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(Conn::from(conn))
}

fn configure(conn: &Connection) -> Result<()> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "the database would not switch to WAL mode (it is in {mode} mode); is it on a network file system?"
        )));
    }
    // FULL: a commit survives power loss too, not only a crash. The writer groups many ops into
    // one commit, so the extra sync is paid once per group.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn check_not_newer(conn: &Connection, path: &Path) -> Result<()> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let found = found.max(0) as usize;
    if found > schema_version() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            known: schema_version(),
        });
    }
    Ok(())
}

/// Milliseconds since the Unix epoch; the unit of every time column.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The steps of SQLite's plan for `sql` (parameters left unbound), for tests that a statement
/// searches by an index instead of scanning.
#[cfg(test)]
pub fn test_plan(conn: &Conn, sql: &str) -> Vec<String> {
    let mut stmt = conn
        .sqlite()
        .expect("SQLite")
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("plan");
    let mut rows = stmt.raw_query();
    let mut steps = Vec::new();
    while let Some(r) = rows.next().expect("plan row") {
        steps.push(r.get::<_, String>(3).expect("detail"));
    }
    steps
}

/// An in-memory database with the schema, for unit tests of the SQL functions.
#[cfg(test)]
pub fn test_connection() -> Conn {
    let mut conn = Connection::open_in_memory().expect("in-memory database");
    conn.pragma_update(None, "foreign_keys", "ON")
        .expect("pragma");
    MIGRATIONS.to_latest(&mut conn).expect("migrations apply");
    Conn::from(conn)
}

/// A job named `j` with no items yet, for unit tests.
#[cfg(test)]
pub fn test_empty_job(conn: &Conn) -> i64 {
    jobs::create(
        conn,
        &jobs::NewJob {
            name: "j".into(),
            source_path: "j.jsonl".into(),
            defaults: crate::model::job::JobDefaults::default(),
            created_at: 0,
        },
        "test",
    )
    .expect("job")
    .expect("a new job")
    .id
}

/// `lines` taken into job `job_id` (and planned) as intake would, for unit tests.
#[cfg(test)]
pub fn test_insert(conn: &Conn, job_id: i64, lines: &[&str]) {
    use crate::model::job::JobDefaults;
    use crate::model::line::parse_line;
    let parsed: Vec<_> = (1..)
        .zip(lines)
        .map(|(n, l)| {
            (
                n,
                parse_line(
                    l.as_bytes(),
                    n,
                    &crate::model::line::LineContext::test(&JobDefaults::default(), 0),
                ),
            )
        })
        .collect();
    let turnaround = batches::turnaround_ms(conn).expect("turnaround");
    let plan = |line: &crate::model::line::ValidLine| {
        let lanes = crate::policy::planner::LaneFacts {
            now: 0,
            batch_turnaround_ms: turnaround,
            job_items: 1_000_000,
            realtime_rpm: Some(50),
        };
        crate::policy::planner::decide_line(line, &lanes)
    };
    items::insert_chunk(conn, job_id, "j.jsonl", &parsed, 0, &plan).expect("insert");
}

/// A job named `j` with `lines` taken in (and planned) as intake would, for unit tests.
#[cfg(test)]
pub fn test_job(conn: &Conn, lines: &[&str]) -> i64 {
    let job_id = test_empty_job(conn);
    test_insert(conn, job_id, lines);
    job_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_rows_are_numbered_after_the_statements_own_parameters() {
        assert_eq!(value_rows(2, 2, 2), "(?3, ?4), (?5, ?6)");
        assert_eq!(value_rows(1, 3, 0), "(?1, ?2, ?3)");
        assert_eq!(
            value_rows_as(2, &["INTEGER", "TEXT"], 1),
            "(CAST(?2 AS INTEGER), CAST(?3 AS TEXT)), (CAST(?4 AS INTEGER), CAST(?5 AS TEXT))"
        );
    }

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().expect("migrations validate");
        let conn = test_connection();
        let version: i64 = conn
            .query_row("PRAGMA user_version", (), |r| r.get(0))
            .expect("user_version");
        assert_eq!(version as usize, schema_version());
    }

    #[test]
    fn an_upgrade_keeps_a_copy_of_the_database_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nightshift.db");
        {
            let mut old = Connection::open(&path).expect("open");
            MIGRATIONS.to_version(&mut old, 4).expect("schema 4");
            old.execute(
                "INSERT INTO jobs (name, source_path, tenant, priority, mode, created_at)
                 VALUES ('kept', 'kept.jsonl', 'default', 'nightly', 'auto', 0)",
                (),
            )
            .expect("a job");
        }
        let conn = open_read_write(&path).expect("upgrade");
        let version = |c: &Connection| -> i64 {
            c.query_row("PRAGMA user_version", (), |r| r.get(0))
                .expect("version")
        };
        assert_eq!(version(&conn) as usize, schema_version());
        let backup = Connection::open(dir.path().join("nightshift.db.v4.bak")).expect("backup");
        assert_eq!(
            version(&backup),
            4,
            "the copy is the database before the upgrade"
        );
        let name: String = backup
            .query_row("SELECT name FROM jobs", (), |r| r.get(0))
            .expect("the job is in the copy");
        assert_eq!(name, "kept");
        drop(conn);
        assert_eq!(
            backup_before_migrating(&open_read_write(&path).expect("reopen"), &path)
                .expect("check"),
            None,
            "nothing to migrate, no copy"
        );
    }

    #[test]
    fn result_lines_move_out_of_the_items_with_the_file_cursor_after_those_written() {
        let mut conn = Connection::open_in_memory().expect("open");
        MIGRATIONS.to_version(&mut conn, 6).expect("schema 6");
        conn.execute_batch(
            "INSERT INTO jobs (id, name, source_path, tenant, priority, mode, created_at, results_bytes, results_lines)
                 VALUES (1, 'j', 'j.jsonl', 'default', 'nightly', 'auto', 0, 8, 1);
             INSERT INTO items (id, job_id, line_no, tenant, priority, mode, state, result, result_written, updated_at)
                 VALUES (1, 1, 1, 'default', 3, 'auto', 'errored', '{\"a\":1}', 0, 0),
                        (2, 1, 2, 'default', 3, 'auto', 'succeeded', '{\"b\":2}', 1, 0),
                        (3, 1, 3, 'default', 3, 'auto', 'pending', NULL, 0, 0);",
        )
        .expect("a job mid-way");
        MIGRATIONS.to_latest(&mut conn).expect("migrate");
        let lines: Vec<(i64, i64, String)> = conn
            .prepare("SELECT seq, item_id, line FROM results ORDER BY seq")
            .expect("prepare")
            .query_map((), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(
            lines,
            vec![(1, 2, "{\"b\":2}".into()), (2, 1, "{\"a\":1}".into())],
            "the line in the file first, then the one waiting"
        );
        let (seq, bytes): (i64, i64) = conn
            .query_row("SELECT results_seq, results_bytes FROM jobs", (), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("job");
        assert_eq!((seq, bytes), (1, 8), "the file holds the first line");
        let unwritten =
            results::unwritten(&Conn::from(conn), "test", 10, 1 << 20).expect("unwritten");
        assert_eq!(unwritten.len(), 1);
        assert_eq!(unwritten[0].line, "{\"a\":1}");
    }

    #[test]
    fn file_database_is_in_wal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open_read_write(&dir.path().join("x.db")).expect("open");
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode.to_lowercase(), "wal");
    }

    #[test]
    fn read_only_open_of_a_missing_database_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open_read_only(dir.path().join("none.db")).expect_err("missing");
        assert!(err.to_string().contains("nightshift run"), "{err}");
    }

    #[tokio::test]
    async fn close_does_not_wait_for_clones_and_they_then_get_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("x.db")).expect("open");
        let clone = store.clone();
        store.close().await;
        let err = clone.call(|_| Ok(())).await.expect_err("closed");
        assert!(matches!(err, StoreError::Closed), "{err}");
    }

    #[tokio::test]
    async fn a_small_change_waits_for_one_large_one_at_most() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("x.db")).expect("open");
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let step = |name: &'static str, pause: u64| {
            let order = order.clone();
            move |_: &Conn| {
                std::thread::sleep(std::time::Duration::from_millis(pause));
                crate::lock(&order).push(name);
                Ok(())
            }
        };
        // Two large changes queued, then a small one: it goes before the second.
        let first = store.submit_alone(step("first large", 200));
        let second = store.submit_alone(step("second large", 0));
        store.call(step("small", 0)).await.expect("small");
        first.await.expect("answered").expect("first");
        second.await.expect("answered").expect("second");
        let order = crate::lock(&order).clone();
        let at = |name| order.iter().position(|n| *n == name).expect("ran");
        assert!(at("small") < at("second large"), "{order:?}");
        assert!(
            at("first large") < at("second large"),
            "large ones in order: {order:?}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn only_large_changes_commit_without_a_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("x.db")).expect("open");
        let synchronous =
            |conn: &Conn| -> Result<i64> { conn.query_row("PRAGMA synchronous", (), |r| r.get(0)) };
        let before = store.call(synchronous).await.expect("before");
        let large = store.submit_alone(synchronous).await.expect("answered");
        let after = store.call(synchronous).await.expect("after");
        // 2 is FULL, 1 NORMAL.
        assert_eq!((before, large.expect("large"), after), (2, 1, 2));
        store.close().await;
    }

    #[tokio::test]
    async fn a_failing_call_rolls_back_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("x.db")).expect("open");
        let bad = store.call(|conn| {
            conn.execute(
                "INSERT INTO rejected_files (file_name, reason, at) VALUES ('a', 'r', 1)",
                (),
            )?;
            Err::<(), _>(StoreError::Invalid("boom".into()))
        });
        let good = store.call(|conn| {
            conn.execute(
                "INSERT INTO rejected_files (file_name, reason, at) VALUES ('b', 'r', 1)",
                (),
            )?;
            Ok(())
        });
        let insert = |name: &'static str, fail: bool| {
            move |conn: &Conn| {
                conn.execute(
                    "INSERT INTO rejected_files (file_name, reason, at) VALUES (?1, 'r', 1)",
                    [name],
                )?;
                if fail {
                    return Err(StoreError::Invalid("boom".into()));
                }
                Ok(())
            }
        };
        // Ops in their own transactions, between the grouped ones.
        let bad_alone = store.submit_alone(insert("c", true));
        let good_alone = store.submit_alone(insert("d", false));
        let (bad, good, bad_alone, good_alone) = tokio::join!(bad, good, bad_alone, good_alone);
        assert!(bad.is_err() && bad_alone.expect("answered").is_err());
        good.expect("good call commits");
        good_alone
            .expect("answered")
            .expect("good call alone commits");
        let names: Vec<String> = store
            .call(|conn| {
                let mut stmt =
                    conn.prepare("SELECT file_name FROM rejected_files ORDER BY file_name")?;
                let rows = stmt.query_map((), |r| r.get(0))?;
                rows.collect::<Result<Vec<String>, _>>()
            })
            .await
            .expect("query");
        assert_eq!(names, vec!["b".to_string(), "d".to_string()]);
        store.close().await;
    }
}
