//! A small migration runner: numbered plain-SQL files per dialect, applied in order, each
//! recorded in `relay_schema_migrations` with a checksum.
//!
//! sqlx's own migrator is not used because it keys migrations to one database type, while the
//! store runs through the Any driver with one set of files per dialect. The runner is
//! idempotent: a migration already recorded is skipped, after checking that its text has not
//! changed since it was applied (an edited migration would leave databases that ran the old
//! text silently different from new ones).
//!
//! Several relay instances may start at once against one database. On SQLite each migration
//! runs in a `BEGIN IMMEDIATE` transaction, which already serialises them. On the servers the
//! whole run happens on one dedicated session that first takes the database's migration lock
//! (`GET_LOCK` on MySQL/MariaDB, `pg_advisory_lock` on PostgreSQL): MySQL commits every DDL
//! statement on its own, so a transaction alone could not stop two instances from both
//! creating the same tables. The session is closed at the end, which releases the lock even
//! when the run failed half-way. MySQL's DDL is not transactional, so a run that fails in the
//! middle of a migration (the server dies) leaves that migration's first tables behind and
//! unrecorded; the operator drops them before restarting. PostgreSQL and SQLite roll back.
//!
//! Plain statements go through `Executor::execute(raw_sql(..))` rather than
//! `raw_sql(..).execute(..)`: the latter's future is generic over the executor, and the
//! compiler cannot prove it `Send`, which `SqlStore::connect` promises its callers.

use sqlx::{AnyConnection, AnyPool, Connection, Executor};
use tracing::{info, warn};

use crate::dialect::Dialect;
use crate::error::StoreError;
use crate::values::{read_i64, read_optional_i64, read_text};

/// How long an instance waits for another one that is migrating the same database. Applying
/// the migrations takes seconds; a lock held this long means a stuck instance, which the
/// operator should hear about rather than wait on forever.
const MIGRATION_LOCK_TIMEOUT_SECONDS: i64 = 300;

/// The PostgreSQL advisory lock key of the migration run: "relaymig" in ASCII. Advisory locks
/// are scoped to the current database, so relays on different databases never wait for each
/// other.
const POSTGRES_MIGRATION_LOCK_KEY: i64 = 0x7265_6c61_796d_6967;

/// The MySQL lock name, computed by the server. `GET_LOCK` names are global to the server, so
/// the name includes the database (hashed, because names are limited to 64 characters).
const MYSQL_MIGRATION_LOCK_NAME: &str =
    "CONCAT('relay_migrations_', SHA1(COALESCE(DATABASE(), '')))";

/// PostgreSQL's SQLSTATE `lock_not_available`: what `lock_timeout` raises.
const POSTGRES_LOCK_NOT_AVAILABLE: &str = "55P03";

/// One schema change, as embedded in the binary.
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Every migration, oldest first, as the files `migrations/<dialect>/<file>.sql` of each
/// dialect: one list, so a migration cannot be added for one dialect and forgotten for another.
macro_rules! migrations_of {
    ($dialect:literal) => {
        &[
            Migration {
                version: 1,
                name: "initial",
                sql: include_str!(concat!("../migrations/", $dialect, "/0001_initial.sql")),
            },
            Migration {
                version: 2,
                name: "drop_usage_request_id_index",
                sql: include_str!(concat!(
                    "../migrations/",
                    $dialect,
                    "/0002_drop_usage_request_id_index.sql"
                )),
            },
        ]
    };
}

const SQLITE_MIGRATIONS: &[Migration] = migrations_of!("sqlite");
const MYSQL_MIGRATIONS: &[Migration] = migrations_of!("mysql");
const POSTGRES_MIGRATIONS: &[Migration] = migrations_of!("postgres");

/// The migrations of `dialect`, oldest first.
pub(crate) fn migrations_for(dialect: Dialect) -> &'static [Migration] {
    match dialect {
        Dialect::Sqlite => SQLITE_MIGRATIONS,
        Dialect::MySql => MYSQL_MIGRATIONS,
        Dialect::Postgres => POSTGRES_MIGRATIONS,
    }
}

/// Spelled so that all three dialects accept it as written.
const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS relay_schema_migrations (\
     version BIGINT NOT NULL PRIMARY KEY, \
     name VARCHAR(191) NOT NULL, \
     checksum VARCHAR(32) NOT NULL, \
     applied_at BIGINT NOT NULL)";

/// Brings the schema up to date: on SQLite over one connection of `pool`, on the servers over
/// a dedicated session to `driver_url` that holds the database's migration lock throughout.
pub(crate) async fn migrate_database(
    pool: &AnyPool,
    driver_url: &str,
    dialect: Dialect,
    now_millis: i64,
) -> Result<(), StoreError> {
    match dialect {
        Dialect::Sqlite => {
            let mut connection = pool.acquire().await?;
            run_migrations(&mut connection, dialect, now_millis).await
        }
        Dialect::MySql | Dialect::Postgres => {
            let mut session = AnyConnection::connect(driver_url).await?;
            let outcome = migrate_under_lock(&mut session, dialect, now_millis).await;
            // Ending the session releases the lock in every case, including a failed unlock.
            if let Err(error) = session.close().await {
                warn!(%error, "could not close the migration session cleanly");
            }
            outcome
        }
    }
}

/// Takes the migration lock, migrates, and gives the lock back.
async fn migrate_under_lock(
    session: &mut AnyConnection,
    dialect: Dialect,
    now_millis: i64,
) -> Result<(), StoreError> {
    acquire_migration_lock(session, dialect).await?;
    let outcome = run_migrations(session, dialect, now_millis).await;
    let released = release_migration_lock(session, dialect).await;
    outcome?;
    released
}

/// Waits (at most `MIGRATION_LOCK_TIMEOUT_SECONDS`) until no other session of this database
/// holds the migration lock, and takes it.
async fn acquire_migration_lock(
    session: &mut AnyConnection,
    dialect: Dialect,
) -> Result<(), StoreError> {
    let held_too_long = || {
        StoreError::Migration(format!(
            "another relay instance has held the migration lock for \
             {MIGRATION_LOCK_TIMEOUT_SECONDS} s; is one stuck while starting?"
        ))
    };
    match dialect {
        Dialect::Sqlite => Ok(()),
        Dialect::MySql => {
            // GET_LOCK answers 1 when taken, 0 on timeout and NULL on an error such as a
            // killed wait; the cast turns its unsigned result into a type the Any driver reads.
            let sql = format!(
                "SELECT CAST(GET_LOCK({MYSQL_MIGRATION_LOCK_NAME}, ?) AS SIGNED) AS acquired"
            );
            let row = sqlx::query(&sql)
                .bind(MIGRATION_LOCK_TIMEOUT_SECONDS)
                .fetch_one(&mut *session)
                .await?;
            match read_optional_i64(&row, "acquired")? {
                Some(1) => Ok(()),
                Some(_) => Err(held_too_long()),
                None => Err(StoreError::Migration(
                    "MySQL refused the migration lock (GET_LOCK answered NULL)".into(),
                )),
            }
        }
        Dialect::Postgres => {
            let set_timeout = format!(
                "SET lock_timeout = {}",
                MIGRATION_LOCK_TIMEOUT_SECONDS * 1000
            );
            (&mut *session).execute(sqlx::raw_sql(&set_timeout)).await?;
            let locked = sqlx::query(&dialect.placeholders("SELECT pg_advisory_lock(?)"))
                .bind(POSTGRES_MIGRATION_LOCK_KEY)
                .execute(&mut *session)
                .await;
            match locked {
                Ok(_) => Ok(()),
                Err(error)
                    if error.as_database_error().and_then(|database_error| {
                        database_error
                            .code()
                            .map(|code| code == POSTGRES_LOCK_NOT_AVAILABLE)
                    }) == Some(true) =>
                {
                    Err(held_too_long())
                }
                Err(error) => Err(StoreError::Database(error)),
            }
        }
    }
}

/// Gives the migration lock back so that the next instance need not wait for this session
/// to close.
async fn release_migration_lock(
    session: &mut AnyConnection,
    dialect: Dialect,
) -> Result<(), StoreError> {
    match dialect {
        Dialect::Sqlite => {}
        Dialect::MySql => {
            let sql = format!(
                "SELECT CAST(RELEASE_LOCK({MYSQL_MIGRATION_LOCK_NAME}) AS SIGNED) AS released"
            );
            sqlx::query(&sql).fetch_one(&mut *session).await?;
        }
        Dialect::Postgres => {
            sqlx::query(&dialect.placeholders("SELECT pg_advisory_unlock(?) AS released"))
                .bind(POSTGRES_MIGRATION_LOCK_KEY)
                .fetch_one(&mut *session)
                .await?;
        }
    }
    Ok(())
}

/// Applies the migrations not yet recorded, one transaction each, on `connection`.
async fn run_migrations(
    connection: &mut AnyConnection,
    dialect: Dialect,
    now_millis: i64,
) -> Result<(), StoreError> {
    (&mut *connection)
        .execute(sqlx::raw_sql(CREATE_MIGRATIONS_TABLE))
        .await
        .map_err(|error| {
            StoreError::Migration(format!("cannot create relay_schema_migrations: {error}"))
        })?;

    let known = migrations_for(dialect);
    for migration in known {
        let mut transaction = match dialect.begin_write_statement() {
            Some(statement) => connection.begin_with(statement).await?,
            None => connection.begin().await?,
        };
        // Checked inside the write transaction so that two processes starting on one SQLite
        // file do not both apply the same migration (the servers hold the migration lock).
        let recorded_checksum = sqlx::query(
            &dialect.placeholders("SELECT checksum FROM relay_schema_migrations WHERE version = ?"),
        )
        .bind(migration.version)
        .fetch_optional(&mut *transaction)
        .await?
        .map(|row| read_text(&row, "checksum"))
        .transpose()?;

        let checksum = migration_checksum(migration.sql);
        match recorded_checksum {
            Some(recorded) if recorded == checksum => {
                transaction.rollback().await?;
                continue;
            }
            Some(recorded) => {
                return Err(StoreError::Migration(format!(
                    "migration {} ({}) was applied with checksum {recorded} but this build has \
                     {checksum}: a released migration must never be edited",
                    migration.version, migration.name
                )));
            }
            None => {}
        }

        for statement in split_statements(migration.sql) {
            (&mut *transaction)
                .execute(sqlx::raw_sql(&statement))
                .await
                .map_err(|error| {
                    StoreError::Migration(format!(
                        "migration {} ({}) failed: {error}",
                        migration.version, migration.name
                    ))
                })?;
        }
        sqlx::query(&dialect.placeholders(
            "INSERT INTO relay_schema_migrations (version, name, checksum, applied_at) \
             VALUES (?, ?, ?, ?)",
        ))
        .bind(migration.version)
        .bind(migration.name)
        .bind(checksum)
        .bind(now_millis)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        info!(
            dialect = dialect.as_str(),
            version = migration.version,
            name = migration.name,
            "applied database migration"
        );
    }

    let newest_known = known.last().map_or(0, |migration| migration.version);
    let newest_applied = sqlx::query("SELECT MAX(version) AS newest FROM relay_schema_migrations")
        .fetch_one(&mut *connection)
        .await
        .and_then(|row| sqlx::Row::try_get::<Option<i64>, _>(&row, "newest"))?
        .unwrap_or(0);
    if newest_applied > newest_known {
        // A newer relay migrated this database. Its changes are additive by policy, so an
        // older binary can keep serving during a rolling upgrade; say so rather than refuse.
        warn!(
            newest_applied,
            newest_known, "the database schema is newer than this build of the relay"
        );
    }
    Ok(())
}

/// The versions recorded as applied, oldest first: for tests and diagnostics.
pub(crate) async fn applied_versions(pool: &AnyPool) -> Result<Vec<i64>, StoreError> {
    let rows = sqlx::query("SELECT version FROM relay_schema_migrations ORDER BY version")
        .fetch_all(pool)
        .await?;
    rows.iter().map(|row| read_i64(row, "version")).collect()
}

/// Splits a migration file into statements: a statement ends with a semicolon at the end of
/// a line, and lines starting with `--` are comments. The servers' prepared-statement
/// protocols take one statement at a time, so the runner cannot send the file whole.
pub(crate) fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        if let Some(without_semicolon) = trimmed.strip_suffix(';') {
            current.push_str(without_semicolon);
            statements.push(std::mem::take(&mut current));
        } else {
            current.push_str(trimmed);
        }
    }
    if !current.trim().is_empty() {
        statements.push(current);
    }
    statements
}

/// FNV-1a over the migration text, as 16 hex digits: enough to notice an edit, no crate needed.
pub(crate) fn migration_checksum(sql: &str) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let hash = sql.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_line_ending_semicolons_and_skip_comments() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE a (\n    x BIGINT\n);\n\nCREATE INDEX i ON a (x);\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE a (\nx BIGINT\n)".to_owned(),
                "CREATE INDEX i ON a (x)".to_owned()
            ]
        );
    }

    #[test]
    fn every_dialect_has_the_same_migration_versions() {
        let versions = |dialect| -> Vec<i64> {
            migrations_for(dialect)
                .iter()
                .map(|migration| migration.version)
                .collect()
        };
        assert_eq!(versions(Dialect::Sqlite), versions(Dialect::MySql));
        assert_eq!(versions(Dialect::Sqlite), versions(Dialect::Postgres));
        assert!(versions(Dialect::Sqlite)
            .windows(2)
            .all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn every_dialect_creates_the_same_tables() {
        let tables = |dialect| -> Vec<String> {
            migrations_for(dialect)
                .iter()
                .flat_map(|migration| split_statements(migration.sql))
                .filter_map(|statement| {
                    statement
                        .strip_prefix("CREATE TABLE ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned)
                })
                .collect()
        };
        let sqlite_tables = tables(Dialect::Sqlite);
        assert_eq!(sqlite_tables.len(), 5, "{sqlite_tables:?}");
        assert_eq!(sqlite_tables, tables(Dialect::MySql));
        assert_eq!(sqlite_tables, tables(Dialect::Postgres));
    }

    #[test]
    fn the_checksum_notices_any_edit() {
        assert_eq!(migration_checksum("abc"), migration_checksum("abc"));
        assert_ne!(migration_checksum("abc"), migration_checksum("abd"));
        assert_eq!(migration_checksum("").len(), 16);
    }
}
