//! `SqlStore`: the connection pool, connecting, and the helpers every query family shares.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay_core::UnixMillis;
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};
use tracing::{info, warn};

use crate::credential::CredentialKey;
use crate::dialect::Dialect;
use crate::error::StoreError;
use crate::location::{sqlite_driver_url, DatabaseLocation};
use crate::migrate::{applied_versions, migrate_database};
use crate::values::read_i64;

/// SQLite serialises writers anyway; a few connections let readers proceed beside a writer
/// (WAL mode) without keeping many idle file handles.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// How long start-up keeps trying to put a SQLite file in WAL mode while other connections
/// use it. The switch needs the file to itself, and SQLite refuses it at once rather than
/// waiting out the busy timeout (the switching connection already holds a read lock, and two
/// such waiting on each other would deadlock): relay instances starting together on a new
/// file meet this.
const SQLITE_WAL_SWITCH_BUDGET: Duration = Duration::from_secs(30);
/// The longest pause between two attempts at the WAL switch.
const SQLITE_WAL_SWITCH_MAX_PAUSE: Duration = Duration::from_millis(100);
/// Enough for one relay instance's bursts on a shared server, few enough that ten instances
/// stay under a default `max_connections` of 151 (MySQL) or 100 (PostgreSQL).
const SERVER_MAX_CONNECTIONS: u32 = 8;

/// The relay's persistent store: groups, accounts, API keys, usage and settings.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Seals account secrets at rest when set (see `credential`).
    credential_key: Option<CredentialKey>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SqlStore")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Connects to `DATABASE_URL` and brings the schema up to date.
    ///
    /// `None` means the SQLite file `./data/relay.db`; `sqlite://PATH` or `sqlite:PATH`
    /// (relative to the working directory, or absolute) means that file. For SQLite the parent
    /// directories and the file are created, and every connection runs in WAL mode with a
    /// 5 s busy timeout, `synchronous=NORMAL` and foreign keys on. `mysql://`, `mariadb://`
    /// and `postgres://` URLs are handed to the driver as they are.
    ///
    /// The future is `Send`, so a caller may connect inside a spawned task (the integration
    /// tests do, which keeps it so).
    pub async fn connect(database_url: Option<&str>) -> Result<SqlStore, StoreError> {
        let working_directory = std::env::current_dir().map_err(|error| {
            StoreError::InvalidUrl(format!(
                "cannot resolve a relative SQLite path: the working directory is unreadable: {error}"
            ))
        })?;
        SqlStore::connect_relative_to(database_url, &working_directory).await
    }

    /// Like [`SqlStore::connect`], with relative SQLite paths resolved against
    /// `base_directory` instead of the working directory (tests, or a `--data-dir` flag).
    pub async fn connect_relative_to(
        database_url: Option<&str>,
        base_directory: &Path,
    ) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let location = DatabaseLocation::parse(database_url)?;
        let dialect = location.dialect();
        let driver_url = match &location {
            DatabaseLocation::Server { url, .. } => url.clone(),
            DatabaseLocation::SqliteFile(_) => {
                let file_path = location
                    .sqlite_file_path(base_directory)
                    .ok_or_else(|| StoreError::InvalidUrl("not a SQLite location".into()))?;
                let resolved_path = prepare_sqlite_file(&file_path)?;
                info!(path = %resolved_path.display(), "opening the SQLite database");
                sqlite_driver_url(&resolved_path)?
            }
        };

        let pool = pool_options(dialect).connect(&driver_url).await?;
        if dialect == Dialect::Sqlite {
            // The journal mode is a property of the file, set once; the other pragmas are
            // per connection and are set in `after_connect`.
            switch_to_wal(&pool, SQLITE_WAL_SWITCH_BUDGET, |attempt| {
                if attempt == 1 {
                    info!("the SQLite file is in use by another connection; waiting to put it in WAL mode");
                }
            })
            .await?;
        }
        let store = SqlStore {
            pool,
            dialect,
            credential_key: None,
        };
        migrate_database(&store.pool, &driver_url, dialect, now_millis()).await?;
        Ok(store)
    }

    /// Seals account secrets written from now on with `key`, and opens sealed ones with it
    /// (`None`: secrets are written in plain text; sealed ones cannot be read).
    pub fn with_credential_key(mut self, key: Option<CredentialKey>) -> SqlStore {
        self.credential_key = key;
        self
    }

    pub(crate) fn credential_key(&self) -> Option<&CredentialKey> {
        self.credential_key.as_ref()
    }

    /// The SQL dialect of the connected database.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Answers whether the database can run a query now: for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned. For shutdown, after
    /// the last usage flush.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The migration versions recorded in the database, oldest first.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        applied_versions(&self.pool).await
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// `sql` with its `?` placeholders spelled for this database.
    pub(crate) fn sql<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        self.dialect.placeholders(sql)
    }

    /// Opens a transaction that is going to write (see `Dialect::begin_write_statement`).
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.dialect.begin_write_statement() {
            Some(statement) => self.pool.begin_with(statement).await?,
            None => self.pool.begin().await?,
        })
    }

    /// Runs an `INSERT` on `connection` and answers the id of the new row.
    ///
    /// Must run inside a transaction (or at least on one connection): the id comes from the
    /// session, and another connection's insert would answer another row's id.
    pub(crate) async fn insert_returning_id<'q>(
        &self,
        connection: &mut AnyConnection,
        insert: Query<'q, Any, AnyArguments<'q>>,
    ) -> Result<i64, StoreError> {
        insert.execute(&mut *connection).await?;
        let row = sqlx::query(self.dialect.last_insert_id_query())
            .fetch_one(&mut *connection)
            .await?;
        let id: i64 = sqlx::Row::try_get(&row, 0)?;
        Ok(id)
    }

    /// Answers whether a row with this id exists in `table`.
    pub(crate) async fn row_exists(
        &self,
        connection: &mut AnyConnection,
        table: &str,
        id: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!("SELECT COUNT(*) AS matching FROM {table} WHERE id = ?");
        let row = sqlx::query(&self.sql(&sql))
            .bind(id)
            .fetch_one(&mut *connection)
            .await?;
        Ok(read_i64(&row, "matching")? > 0)
    }
}

/// Puts the SQLite file of `pool` in WAL mode, trying again while other connections hold the
/// file until `budget` has passed. `on_busy` hears each refused attempt, counted from 1.
async fn switch_to_wal(
    pool: &AnyPool,
    budget: Duration,
    mut on_busy: impl FnMut(u32),
) -> Result<(), StoreError> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sqlx::query("PRAGMA journal_mode = WAL")
            .fetch_one(pool)
            .await
        {
            Ok(row) => {
                let mode = sqlx::Row::try_get::<String, _>(&row, 0)?;
                if !mode.eq_ignore_ascii_case("wal") {
                    warn!(
                        mode,
                        "the SQLite file cannot be put in WAL mode (its file system may not \
                         support it): readers will wait for writers"
                    );
                }
                return Ok(());
            }
            Err(error) if is_sqlite_busy(&error) && started.elapsed() < budget => {
                on_busy(attempt);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(SQLITE_WAL_SWITCH_MAX_PAUSE);
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether SQLite answered `SQLITE_BUSY` ("database is locked"), in any of its extended forms.
fn is_sqlite_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    error
        .as_database_error()
        .and_then(|database_error| database_error.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

/// Pool settings per dialect; SQLite connections get their pragmas as they open.
fn pool_options(dialect: Dialect) -> AnyPoolOptions {
    match dialect {
        Dialect::Sqlite => AnyPoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .after_connect(|connection, _metadata| {
                Box::pin(async move {
                    // busy_timeout first: the pragmas after it may themselves wait for a lock.
                    connection.execute("PRAGMA busy_timeout = 5000").await?;
                    connection.execute("PRAGMA synchronous = NORMAL").await?;
                    connection.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            }),
        Dialect::MySql | Dialect::Postgres => {
            AnyPoolOptions::new().max_connections(SERVER_MAX_CONNECTIONS)
        }
    }
}

/// Creates the directories of a SQLite file and answers its path with symbolic links and
/// `..` resolved, which is what the driver URL must carry (URL parsing folds `..` blindly).
///
/// Blocking file-system calls are acceptable here: this runs once, at start-up.
fn prepare_sqlite_file(file_path: &Path) -> Result<std::path::PathBuf, StoreError> {
    let file_name = file_path.file_name().ok_or_else(|| {
        StoreError::InvalidUrl(format!(
            "the SQLite path {} does not name a file",
            file_path.display()
        ))
    })?;
    let parent = file_path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(parent).map_err(|error| {
        StoreError::InvalidUrl(format!(
            "cannot create the directory {} for the SQLite database: {error}",
            parent.display()
        ))
    })?;
    let resolved_parent = std::fs::canonicalize(parent).map_err(|error| {
        StoreError::InvalidUrl(format!(
            "cannot resolve the directory {} of the SQLite database: {error}",
            parent.display()
        ))
    })?;
    Ok(resolved_parent.join(file_name))
}

/// The wall clock in unix milliseconds, for `created_at` / `updated_at` of rows the store
/// creates. A clock before 1970 reads as 0 rather than failing a write.
pub(crate) fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// A directory of this test run's own under the system's temporary one.
    fn scratch_directory(label: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "relay-store-{label}-{}-{}",
            std::process::id(),
            now_millis()
        ))
    }

    #[tokio::test]
    async fn every_sqlite_connection_gets_the_relays_pragmas() {
        let directory = scratch_directory("pragmas");
        let store = SqlStore::connect_relative_to(Some("sqlite://pragmas.db"), &directory)
            .await
            .unwrap();
        // Hold several connections at once so that more than the first one is checked.
        let mut connections = Vec::new();
        for _ in 0..3 {
            connections.push(store.pool().acquire().await.unwrap());
        }
        for connection in &mut connections {
            let pragma = |name: &'static str| format!("PRAGMA {name}");
            let mut read = async |name: &'static str| -> i64 {
                let row = sqlx::query(&pragma(name))
                    .fetch_one(&mut **connection)
                    .await
                    .unwrap();
                sqlx::Row::try_get::<i64, _>(&row, 0).unwrap()
            };
            assert_eq!(read("busy_timeout").await, 5000);
            // 1 is NORMAL.
            assert_eq!(read("synchronous").await, 1);
            assert_eq!(read("foreign_keys").await, 1);
        }
        drop(connections);
        store.close().await;
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[tokio::test]
    async fn the_wal_switch_waits_for_a_reader_of_the_file() {
        let directory = scratch_directory("wal-switch");
        let file = prepare_sqlite_file(&directory.join("busy.db")).unwrap();
        let url = sqlite_driver_url(&file).unwrap();
        sqlx::any::install_default_drivers();

        // Another connection reads the file (still in rollback-journal mode) in a transaction.
        let mut reader = AnyConnection::connect(&url).await.unwrap();
        (&mut reader)
            .execute(sqlx::raw_sql("CREATE TABLE earlier (x INTEGER)"))
            .await
            .unwrap();
        let mut reading = reader.begin().await.unwrap();
        sqlx::query("SELECT x FROM earlier")
            .fetch_all(&mut *reading)
            .await
            .unwrap();

        // No busy timeout, so that each refused attempt comes back at once; the relay's own
        // 5 s wait only makes each attempt slower.
        let pool = AnyPoolOptions::new()
            .after_connect(|connection, _metadata| {
                Box::pin(async move {
                    connection.execute("PRAGMA busy_timeout = 0").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap();
        let (refused_tx, refused_rx) = tokio::sync::oneshot::channel();
        let mut refused_tx = Some(refused_tx);
        let switching = switch_to_wal(&pool, Duration::from_secs(30), |_| {
            if let Some(refused_tx) = refused_tx.take() {
                let _ = refused_tx.send(());
            }
        });
        tokio::pin!(switching);
        tokio::select! {
            outcome = &mut switching => {
                panic!("the switch ended while another connection read the file: {outcome:?}")
            }
            _ = refused_rx => {}
        }
        reading.commit().await.unwrap();
        switching.await.unwrap();

        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(sqlx::Row::try_get::<String, _>(&row, 0).unwrap(), "wal");
        reader.close().await.unwrap();
        pool.close().await;
        let _ = std::fs::remove_dir_all(&directory);
    }
}
