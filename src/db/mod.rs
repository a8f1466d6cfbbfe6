//! Database plumbing: the r2d2 pool for occasional work, dedicated connections for the hot
//! paths (fetcher, bookers) so their prepared statements live as long as the connection, and a
//! typed error that keeps the SQLSTATE and the trigger message.

pub mod queries;
pub mod booking;
pub mod accounting;

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use std::fmt;
use std::time::Duration;

pub type Pool = r2d2::Pool<Manager>;
pub type PooledClient = r2d2::PooledConnection<Manager>;

/// `postgres::Config::connect` panics when it cannot create its internal runtime (out of file
/// descriptors: "Too many open files"). Every connect of ours goes through this, which turns
/// that panic into an error.
fn connect_guarded(config: &postgres::Config) -> Result<Client, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.connect(NoTls))) {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("cannot set up the connection (out of file descriptors?): {why}"))
        }
    }
}

/// The pool's connection manager: r2d2_postgres's, with the panic of `connect_guarded` caught.
pub struct Manager(PostgresConnectionManager<NoTls>, postgres::Config);

#[derive(Debug)]
pub struct ManagerError(String);

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ManagerError {}

impl r2d2::ManageConnection for Manager {
    type Connection = Client;
    type Error = ManagerError;

    fn connect(&self) -> Result<Client, ManagerError> {
        connect_guarded(&self.1).map_err(ManagerError)
    }

    fn is_valid(&self, conn: &mut Client) -> Result<(), ManagerError> {
        self.0.is_valid(conn).map_err(|e| ManagerError(e.to_string()))
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        self.0.has_broken(conn)
    }
}

/// Every database failure, with what we were doing when it happened.
#[derive(Debug)]
pub enum DbError {
    Connect { context: &'static str, message: String },
    Pool { context: &'static str, message: String },
    Query { context: &'static str, source: postgres::Error },
    /// A row the scheduler cannot use (NULL where Cuebot never writes one, out-of-range value).
    BadRow { context: &'static str, message: String },
}

impl DbError {
    pub fn query(context: &'static str) -> impl FnOnce(postgres::Error) -> DbError {
        move |source| DbError::Query { context, source }
    }

    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Query { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The server's message text (trigger messages live here).
    pub fn server_message(&self) -> Option<&str> {
        match self {
            DbError::Query { source, .. } => source.as_db_error().map(|e| e.message()),
            _ => None,
        }
    }

    /// Deadlock or serialization failure: worth a bounded retry.
    pub fn is_transient(&self) -> bool {
        matches!(self.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
    }

    /// The connection is gone; the holder must reconnect.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            DbError::Query { source, .. } => source.is_closed() || source.as_db_error().is_none() && source.code().is_none(),
            DbError::Connect { .. } | DbError::Pool { .. } => true,
            DbError::BadRow { .. } => false,
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Connect { context, message } => write!(f, "{context}: cannot connect to PostgreSQL: {message}"),
            DbError::Pool { context, message } => write!(f, "{context}: no database connection: {message}"),
            DbError::Query { context, source } => match source.as_db_error() {
                Some(db) => write!(f, "{context}: {} (SQLSTATE {})", db.message(), db.code().code()),
                None => write!(f, "{context}: {source}"),
            },
            DbError::BadRow { context, message } => write!(f, "{context}: unusable row: {message}"),
        }
    }
}

impl std::error::Error for DbError {}

/// Connection settings shared by the pool and the dedicated connections.
#[derive(Clone)]
pub struct DbSettings {
    /// libpq key=value string; holds the password, so never logged.
    pub connection_string: String,
    /// `host:port/dbname`, safe to log.
    pub display: String,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    /// The scheduler instance these connections belong to (empty outside a pipeline): every
    /// session's `application_name` ends in `[<instance>]`, so peers can find, and fence, all
    /// of one instance's sessions (see `pipeline::ownership`).
    pub instance: String,
}

impl fmt::Debug for DbSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbSettings").field("display", &self.display).field("pool_size", &self.pool_size).finish()
    }
}

fn pg_config(settings: &DbSettings) -> Result<postgres::Config, DbError> {
    let mut config: postgres::Config = settings
        .connection_string
        .parse()
        .map_err(|e: postgres::Error| DbError::Connect { context: "parse connection settings", message: e.to_string() })?;
    config.connect_timeout(settings.connect_timeout);
    config.application_name(&application_name(settings, "cue-scheduler"));
    // Client-side keepalives notice a vanished server; the server-side ones (below) end the
    // sessions of a vanished or frozen client, so its locks do not outlive it.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(crate::limits::DB_TCP_KEEPALIVES_IDLE_SECS));
    config.options(&session_options());
    Ok(config)
}

/// `base`, tagged with the instance when there is one: `cue-scheduler [host:pid]`.
pub fn application_name(settings: &DbSettings, base: &str) -> String {
    if settings.instance.is_empty() {
        base.to_string()
    } else {
        format!("{base} [{}]", settings.instance)
    }
}

/// Per-session server settings (`-c` options at connect, so they hold from the first
/// statement). Bounds and why they have their values: `limits.rs`.
pub fn session_options() -> String {
    use crate::limits::*;
    format!(
        "-c idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_TIMEOUT_MS} -c lock_timeout={DB_LOCK_TIMEOUT_MS} \
         -c statement_timeout={DB_STATEMENT_TIMEOUT_MS} -c tcp_keepalives_idle={DB_TCP_KEEPALIVES_IDLE_SECS} \
         -c tcp_keepalives_interval={DB_TCP_KEEPALIVES_INTERVAL_SECS} -c tcp_keepalives_count={DB_TCP_KEEPALIVES_COUNT} \
         -c tcp_user_timeout={DB_TCP_USER_TIMEOUT_MS} -c default_transaction_isolation=read\\ committed"
    )
}

pub fn connect(settings: &DbSettings, context: &'static str) -> Result<Client, DbError> {
    connect_guarded(&pg_config(settings)?).map_err(|e| DbError::Connect { context, message: format!("{e} ({})", settings.display) })
}

/// A dedicated connection with its own `application_name`, so operators (and tests) can find it
/// in `pg_stat_activity`.
pub fn connect_as(settings: &DbSettings, context: &'static str, application_name: &str) -> Result<Client, DbError> {
    let mut config = pg_config(settings)?;
    config.application_name(&self::application_name(settings, application_name));
    connect_guarded(&config).map_err(|e| DbError::Connect { context, message: format!("{e} ({})", settings.display) })
}

pub fn pool(settings: &DbSettings) -> Result<Pool, DbError> {
    let config = pg_config(settings)?;
    let manager = Manager(PostgresConnectionManager::new(config.clone(), NoTls), config);
    r2d2::Pool::builder()
        .max_size(settings.pool_size)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(30).max(settings.connect_timeout))
        .idle_timeout(Some(Duration::from_secs(30)))
        .max_lifetime(Some(Duration::from_secs(3600)))
        .build(manager)
        .map_err(|e| DbError::Pool { context: "create connection pool", message: format!("{e} ({})", settings.display) })
}

pub fn get(pool: &Pool, context: &'static str) -> Result<PooledClient, DbError> {
    pool.get().map_err(|e| DbError::Pool { context, message: e.to_string() })
}

/// Whether `table.column` exists (schema-dependent features such as `b_scheduler_managed`).
pub fn column_exists(client: &mut Client, table: &str, column: &str) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2)",
            &[&table, &column],
        )
        .map_err(DbError::query("check schema"))?;
    Ok(row.get(0))
}
