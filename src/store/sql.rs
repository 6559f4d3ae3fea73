//! The seam between the store's SQL and the database that runs it: one [`Conn`] over SQLite or
//! PostgreSQL, with the few calls the store makes (`execute`, `query_row`, `query_map`, prepared
//! statements, `last_insert_rowid`) shaped like rusqlite's, so each store function is written
//! once. Values cross it as [`Value`]s: integers, reals, text, blobs and NULL, the types both
//! schemas use (every SQLite INTEGER is a PostgreSQL BIGINT).
//!
//! The SQL is SQLite's, with numbered parameters (`?1`); for PostgreSQL they become `$1`, and the
//! few functions the dialects name differently are given SQLite's names by the PostgreSQL schema
//! (`migrations/postgres/`). Where the two need different statements (a claim with `FOR UPDATE
//! SKIP LOCKED`), the store asks [`Conn::dialect`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use super::{Result, StoreError};

/// Which database a [`Conn`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// What ends a SELECT that claims rows several daemons may claim at once: on PostgreSQL the
    /// rows are locked until the transaction ends, and rows another transaction holds are
    /// skipped. SQLite has one writer at a time and no such clause.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// One value in or out of the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What can be bound as a parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, i8, u32, u16, u8);

impl ToValue for u64 {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for std::borrow::Cow<'_, str> {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// What can be read from a column.
pub trait FromValue: Sized {
    fn from_value(value: Value) -> std::result::Result<Self, String>;
}

fn wrong(expected: &str, got: &Value) -> String {
    format!("expected {expected}, found {got:?}")
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: Value) -> std::result::Result<Self, String> {
                match value {
                    Value::Int(i) => <$t>::try_from(i).map_err(|e| format!("{i}: {e}")),
                    other => Err(wrong("an integer", &other)),
                }
            }
        }
    )*};
}
int_from_value!(i64, i32, i16, u64, u32, u16, u8, usize);

impl FromValue for bool {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Int(i) => Ok(i != 0),
            other => Err(wrong("a flag", &other)),
        }
    }
}
impl FromValue for f64 {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(wrong("a number", &other)),
        }
    }
}
impl FromValue for String {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s),
            other => Err(wrong("text", &other)),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            other => Err(wrong("bytes", &other)),
        }
    }
}
impl FromValue for Value {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        Ok(value)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// The parameters of a statement.
pub trait Params {
    fn values(&self) -> Vec<Value>;
}

impl Params for () {
    fn values(&self) -> Vec<Value> {
        Vec::new()
    }
}
impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl<T: ToValue> Params for &[T] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl<T: ToValue> Params for Vec<T> {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl<T: ToValue, const N: usize> Params for &[T; N] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}

/// Parameters of mixed types, as rusqlite's `params!`: `params![id, name, now]`.
#[macro_export]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::store::sql::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue] };
}
pub use crate::sql_params as params;

/// Parameters from a list made at run time.
pub fn params_from_iter<T: ToValue>(values: impl IntoIterator<Item = T>) -> Vec<Value> {
    values.into_iter().map(|v| v.to_value()).collect()
}

/// `query_row`'s "no row" as `None`, as rusqlite's `OptionalExtension`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}
impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// How a column is named: by its place, from 0.
pub trait RowIndex {
    fn index(self) -> usize;
}
impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// A row being read.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `index` (from 0) as a `T`.
    pub fn get<I: RowIndex, T: FromValue>(&self, index: I) -> Result<T> {
        let index = index.index();
        let value = match self {
            Row::Sqlite(row) => sqlite_value(row.get_ref(index)?),
            Row::Pg(row) => pg_value(row, index)?,
        };
        T::from_value(value).map_err(|e| StoreError::Type {
            column: index,
            error: e,
        })
    }
}

fn sqlite_value(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// One connection, to SQLite or PostgreSQL. Not shared between threads: each thread (the
/// writer, a reader) has its own.
pub struct Conn {
    inner: Inner,
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Pg(Box<RefCell<PgConn>>),
}

/// A PostgreSQL connection and its prepared statements, by the SQL they were made from.
pub struct PgConn {
    /// Always there until dropped (see the `Drop` below).
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    fn client(&mut self) -> &mut postgres::Client {
        self.client
            .as_mut()
            .expect("a PostgreSQL client is kept until dropped")
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // The client says goodbye to the server by blocking on a runtime of its own, which a
        // thread of tokio's may not do: there it is dropped on a thread of its own.
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("nightshift-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("dialect", &self.dialect())
            .finish()
    }
}

impl From<rusqlite::Connection> for Conn {
    fn from(conn: rusqlite::Connection) -> Conn {
        Conn {
            inner: Inner::Sqlite(conn),
        }
    }
}

impl From<postgres::Client> for Conn {
    fn from(client: postgres::Client) -> Conn {
        Conn {
            inner: Inner::Pg(Box::new(RefCell::new(PgConn {
                client: Some(client),
                statements: HashMap::new(),
            }))),
        }
    }
}

impl Conn {
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Pg(_) => Dialect::Postgres,
        }
    }

    /// Whether the connection is gone (PostgreSQL's server closed it, or restarted): nothing
    /// more can run on it, and a new one is needed. Never for SQLite.
    pub fn is_lost(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => false,
            Inner::Pg(pg) => pg.borrow().client.as_ref().is_none_or(|c| c.is_closed()),
        }
    }

    /// The rows of a JSON array bound as parameter `?{param}`, as a table with the column
    /// `value`, for `FROM`: SQLite's `json_each`. PostgreSQL gives each value as text: compare
    /// numbers with `CAST(value AS BIGINT)`.
    pub fn json_each(&self, param: usize) -> String {
        match self.dialect() {
            Dialect::Sqlite => format!("json_each(?{param})"),
            Dialect::Postgres => format!(
                "json_array_elements_text(CAST(?{param} AS TEXT)::json) AS json_each(value)"
            ),
        }
    }

    /// The SQLite connection underneath, for what only SQLite has (pragmas, backups).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(conn) => Some(conn),
            Inner::Pg(_) => None,
        }
    }

    /// Runs one or more statements without parameters or results (`BEGIN`, `SAVEPOINT s`).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Inner::Pg(pg) => Ok(pg.borrow_mut().client().batch_execute(sql)?),
        }
    }

    /// Runs `f` in a transaction of its own: committed if it returns `Ok`, else rolled back.
    pub fn transaction<T>(&self, f: impl FnOnce(&Conn) -> Result<T>) -> Result<T> {
        self.execute_batch("BEGIN")?;
        let done = f(self).and_then(|v| self.execute_batch("COMMIT").map(|()| v));
        if done.is_err() {
            // Nothing to roll back when COMMIT itself ended the transaction.
            let _ = self.execute_batch("ROLLBACK");
        }
        done
    }

    /// Runs a statement; returns how many rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    /// The first row of a query, read by `f`; [`StoreError::NoRows`] when there is none.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    /// Every row of a query, each read by `f`.
    pub fn query_map<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Mapped<T>> {
        self.prepare_cached(sql)?.query_map(params, f)
    }

    /// A statement, prepared once per connection and kept.
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>> {
        match &self.inner {
            Inner::Sqlite(conn) => Ok(Stmt::Sqlite(conn.prepare_cached(sql)?)),
            Inner::Pg(pg) => {
                let mut pg_conn = pg.borrow_mut();
                let statement = match pg_conn.statements.get(sql) {
                    Some(statement) => statement.clone(),
                    None => {
                        let translated = to_postgres(sql);
                        let statement = pg_conn
                            .client()
                            .prepare(&translated)
                            .map_err(|e| StoreError::pg_in(e, &translated))?;
                        pg_conn.statements.insert(sql.to_owned(), statement.clone());
                        statement
                    }
                };
                Ok(Stmt::Pg {
                    conn: pg,
                    statement,
                    sql: sql.to_owned(),
                })
            }
        }
    }

    /// A statement; the same as [`Conn::prepare_cached`] (both keep it).
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>> {
        self.prepare_cached(sql)
    }

    /// The id of the row the last INSERT made on this connection.
    pub fn last_insert_rowid(&self) -> Result<i64> {
        match &self.inner {
            Inner::Sqlite(conn) => Ok(conn.last_insert_rowid()),
            Inner::Pg(_) => self.query_row("SELECT lastval()", (), |r| r.get(0)),
        }
    }
}

/// The rows of [`Stmt::query_map`], each read or the error reading it.
pub type Mapped<T> = std::vec::IntoIter<Result<T>>;

/// A prepared statement.
pub enum Stmt<'c> {
    Sqlite(rusqlite::CachedStatement<'c>),
    Pg {
        conn: &'c RefCell<PgConn>,
        statement: postgres::Statement,
        /// For messages: the SQL it was made from.
        sql: String,
    },
}

impl Stmt<'_> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        let values = params.values();
        match self {
            Stmt::Sqlite(stmt) => Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))?),
            Stmt::Pg {
                conn,
                statement,
                sql,
            } => {
                let refs = pg_params(&values);
                let changed = conn
                    .borrow_mut()
                    .client()
                    .execute(&*statement, &refs)
                    .map_err(|e| StoreError::pg_in(e, sql))?;
                Ok(usize::try_from(changed).unwrap_or(usize::MAX))
            }
        }
    }

    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let values = params.values();
        match self {
            Stmt::Sqlite(stmt) => {
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(row) => f(&Row::Sqlite(row)),
                    None => Err(StoreError::NoRows),
                }
            }
            Stmt::Pg {
                conn,
                statement,
                sql,
            } => {
                let refs = pg_params(&values);
                // Fetched before `f` runs, so `f` may use the connection again.
                let rows = conn
                    .borrow_mut()
                    .client()
                    .query(&*statement, &refs)
                    .map_err(|e| StoreError::pg_in(e, sql))?;
                match rows.first() {
                    Some(row) => f(&Row::Pg(row)),
                    None => Err(StoreError::NoRows),
                }
            }
        }
    }

    /// Every row of a query, each read by `f` (all read before this returns; a row `f` could
    /// not read is an `Err` in its place).
    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Mapped<T>> {
        let values = params.values();
        let mut out = Vec::new();
        match self {
            Stmt::Sqlite(stmt) => {
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                loop {
                    match rows.next() {
                        Ok(Some(row)) => out.push(f(&Row::Sqlite(row))),
                        Ok(None) => break,
                        Err(e) => {
                            out.push(Err(e.into()));
                            break;
                        }
                    }
                }
            }
            Stmt::Pg {
                conn,
                statement,
                sql,
            } => {
                let refs = pg_params(&values);
                let rows = conn
                    .borrow_mut()
                    .client()
                    .query(&*statement, &refs)
                    .map_err(|e| StoreError::pg_in(e, sql))?;
                out.extend(rows.iter().map(|row| f(&Row::Pg(row))));
            }
        }
        Ok(out.into_iter())
    }

    /// Whether the query has a row.
    pub fn exists<P: Params>(&mut self, params: P) -> Result<bool> {
        self.query_row(params, |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
    }
}

// --- PostgreSQL ---------------------------------------------------------------------------------

/// SQLite's SQL as PostgreSQL's: `?N` becomes `$N` and a bare `?` the next number; nothing
/// inside quotes or comments changes.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next_bare = 0;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                if digits.is_empty() {
                    next_bare += 1;
                    digits = next_bare.to_string();
                }
                out.push('$');
                out.push_str(&digits);
            }
            _ => out.push(c),
        }
    }
    out
}

fn pg_params(values: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::Type;
        match self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::NUMERIC => numeric_from_i64(*i, out),
                _ => i.to_string().as_str().to_sql(ty, out),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::INT8 if f.fract() == 0.0 => (*f as i64).to_sql(ty, out),
                Type::FLOAT8 => f.to_sql(ty, out),
                _ => Err(format!("a real number cannot be bound to a {ty} parameter").into()),
            },
            Value::Text(s) => match *ty {
                Type::INT8 | Type::INT4 | Type::INT2 | Type::FLOAT8 | Type::BOOL => {
                    Err(format!("text cannot be bound to a {ty} parameter").into())
                }
                _ => s.as_str().to_sql(&Type::TEXT, out),
            },
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// An integer in PostgreSQL's binary NUMERIC form (base-10000 digits, most significant first).
fn numeric_from_i64(
    i: i64,
    out: &mut bytes::BytesMut,
) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
    use bytes::BufMut;
    let mut digits = Vec::new();
    let mut rest = i.unsigned_abs();
    while rest > 0 {
        digits.push((rest % 10_000) as i16);
        rest /= 10_000;
    }
    digits.reverse();
    let count = digits.len() as i16;
    out.put_i16(count);
    // The weight of the first digit (as PostgreSQL writes it, 0 for zero, which has none).
    out.put_i16((count - 1).max(0));
    out.put_u16(if i < 0 { 0x4000 } else { 0 });
    out.put_u16(0); // display scale
    for d in digits {
        out.put_i16(d);
    }
    Ok(postgres::types::IsNull::No)
}

/// A NUMERIC column (what SUM over BIGINT gives) as an integer when it is whole, else a real.
struct Numeric(Value);

impl<'a> postgres::types::FromSql<'a> for Numeric {
    fn from_sql(
        _: &postgres::types::Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |at: usize| -> std::result::Result<u16, String> {
            raw.get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "a NUMERIC value too short".to_owned())
        };
        let count = word(0)? as usize;
        let weight = word(2)? as i16;
        let sign = word(4)?;
        if sign == 0xC000 {
            return Ok(Numeric(Value::Real(f64::NAN)));
        }
        let mut whole: i128 = 0;
        let mut fraction = 0.0f64;
        let mut exact = true;
        for n in 0..count {
            let digit = i128::from(word(8 + 2 * n)?);
            let power = i32::from(weight) - n as i32;
            if power >= 0 {
                whole = whole
                    .saturating_add(digit.saturating_mul(10_000i128.saturating_pow(power as u32)));
            } else if digit != 0 {
                exact = false;
                fraction += digit as f64 * 10_000f64.powi(power);
            }
        }
        let negative = sign == 0x4000;
        let value = match i64::try_from(whole) {
            Ok(w) if exact => Value::Int(if negative { -w } else { w }),
            _ => {
                let f = whole as f64 + fraction;
                Value::Real(if negative { -f } else { f })
            }
        };
        Ok(Numeric(value))
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        *ty == postgres::types::Type::NUMERIC
    }
}

fn pg_value(row: &postgres::Row, index: usize) -> Result<Value> {
    use postgres::types::Type;
    let column = row.columns().get(index).ok_or(StoreError::Type {
        column: index,
        error: "no such column".into(),
    })?;
    // Column `index` as a `T`, NULL as None.
    fn read<'a, T: postgres::types::FromSql<'a>>(
        row: &'a postgres::Row,
        index: usize,
    ) -> Result<Option<T>> {
        row.try_get(index).map_err(|e| StoreError::Type {
            column: index,
            error: e.to_string(),
        })
    }
    let value = match *column.type_() {
        Type::INT8 => read::<i64>(row, index)?.map(Value::Int),
        Type::INT4 => read::<i32>(row, index)?.map(|i| Value::Int(i.into())),
        Type::INT2 => read::<i16>(row, index)?.map(|i| Value::Int(i.into())),
        Type::BOOL => read::<bool>(row, index)?.map(|b| Value::Int(b.into())),
        Type::FLOAT8 => read::<f64>(row, index)?.map(Value::Real),
        Type::FLOAT4 => read::<f32>(row, index)?.map(|f| Value::Real(f.into())),
        Type::NUMERIC => read::<Numeric>(row, index)?.map(|n| n.0),
        Type::BYTEA => read::<Vec<u8>>(row, index)?.map(Value::Blob),
        _ => read::<String>(row, index)?.map(Value::Text),
    };
    Ok(value.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_for_postgres_outside_quotes_and_comments() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = ?12 -- what? ?3\n AND d = '?2'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 -- what? ?3\n AND d = '?2'"
        );
        assert_eq!(
            to_postgres("VALUES (?, ?, \"?\")"),
            "VALUES ($1, $2, \"?\")"
        );
    }

    #[test]
    fn sqlite_values_round_trip() {
        let conn = Conn::from(rusqlite::Connection::open_in_memory().expect("memory"));
        conn.execute_batch("CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB)")
            .expect("table");
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            params![7i64, 1.5, "x", None::<Vec<u8>>],
        )
        .expect("insert");
        let (i, f, s, b): (i64, f64, String, Option<Vec<u8>>) = conn
            .query_row("SELECT i, f, s, b FROM t", (), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .expect("row");
        assert_eq!((i, f, s.as_str(), b), (7, 1.5, "x", None));
        assert!(matches!(
            conn.query_row("SELECT i FROM t WHERE i = 8", (), |r| r.get::<_, i64>(0)),
            Err(StoreError::NoRows)
        ));
        assert_eq!(
            conn.query_row("SELECT i FROM t WHERE i = 8", (), |r| r.get::<_, i64>(0))
                .optional()
                .expect("no row is None"),
            None
        );
        let wrong = conn.query_row("SELECT s FROM t", (), |r| r.get::<_, i64>(0));
        assert!(
            matches!(wrong, Err(StoreError::Type { column: 0, .. })),
            "{wrong:?}"
        );
    }
}
