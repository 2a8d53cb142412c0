//! Runs one test body on each backend the store supports: a fresh SQLite file, a fresh MariaDB
//! (or MySQL) database and a fresh PostgreSQL database, each created for that test alone and
//! removed when it ends, so that tests can run in parallel and runs can repeat.
//!
//! The servers are found through `RELAY_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`) and `RELAY_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the database named there is only used to create
//! and drop the per-test databases. A server that cannot be reached fails the test with a
//! message saying how to start it: CI starts the servers, so a silent skip would hide a broken
//! backend.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use relay_store::{Dialect, SqlStore};
use sqlx::{AnyConnection, Connection};

/// One of the databases the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MariaDb,
    Postgres,
}

impl Backend {
    /// The dialect the store must report when connected to this backend.
    pub fn dialect(self) -> Dialect {
        match self {
            Backend::Sqlite => Dialect::Sqlite,
            Backend::MariaDb => Dialect::MySql,
            Backend::Postgres => Dialect::Postgres,
        }
    }

    /// The server's base URL and the variable that overrides it; `None` for SQLite.
    fn server_base_url(self) -> Option<(String, &'static str)> {
        let (variable, default) = match self {
            Backend::Sqlite => return None,
            Backend::MariaDb => ("RELAY_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
            Backend::Postgres => (
                "RELAY_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
        };
        let url = std::env::var(variable)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .unwrap_or_else(|| default.to_owned());
        Some((url, variable))
    }
}

/// A name no other test, process or earlier run uses: process id, wall-clock nanoseconds and a
/// per-process counter. Short and lower-case, so it is a valid database name everywhere.
fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory of its own under the system temp dir, removed when dropped.
pub struct TempDirectory {
    pub path: PathBuf,
}

impl TempDirectory {
    pub fn new(test_name: &str) -> TempDirectory {
        TempDirectory {
            path: create_temp_directory(test_name),
        }
    }

    pub fn database_url(&self) -> String {
        sqlite_url_in(&self.path)
    }
}

fn create_temp_directory(test_name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("relay-store-{test_name}-{}", unique_suffix()));
    std::fs::create_dir_all(&path)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
    path
}

fn sqlite_url_in(directory: &Path) -> String {
    format!("sqlite://{}", directory.join("relay.db").display())
}

impl Drop for TempDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What has to be removed when the test ends.
#[derive(Debug, Clone)]
enum Cleanup {
    /// The SQLite file's directory.
    Directory(PathBuf),
    /// A database created on a server, dropped through a session to the base URL.
    ServerDatabase { base_url: String, name: String },
}

/// A fresh, empty database for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub backend: Backend,
    url: String,
    cleanup: Cleanup,
}

impl TestDatabase {
    /// Creates the database; panics with a clear message when the server cannot be reached.
    pub async fn create(backend: Backend, test_name: &str) -> TestDatabase {
        sqlx::any::install_default_drivers();
        let Some((base_url, variable)) = backend.server_base_url() else {
            let directory = create_temp_directory(test_name);
            return TestDatabase {
                backend,
                url: sqlite_url_in(&directory),
                cleanup: Cleanup::Directory(directory),
            };
        };
        let name = format!("relay_t_{}", unique_suffix());
        let mut admin = connect_to_server(backend, &base_url, variable).await;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot create the test database {name} on {}: {error}",
                    redacted(&base_url)
                )
            });
        let _ = admin.close().await;
        TestDatabase {
            backend,
            url: with_database(&base_url, &name),
            cleanup: Cleanup::ServerDatabase { base_url, name },
        }
    }

    /// The URL a relay would be given as `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects the store, which migrates the fresh database on first use.
    pub async fn open_store(&self) -> SqlStore {
        SqlStore::connect(Some(self.url()))
            .await
            .unwrap_or_else(|error| {
                panic!("cannot open the {:?} test store: {error}", self.backend)
            })
    }

    /// A session of its own on the test database, to tamper with it the way a bug or an
    /// operator might, or to hold a lock.
    pub async fn raw_connection(&self) -> AnyConnection {
        AnyConnection::connect(self.url())
            .await
            .unwrap_or_else(|error| panic!("cannot open a raw {:?} session: {error}", self.backend))
    }

    /// Removes the database. Best effort: a leftover database never fails a test.
    async fn remove(&self) {
        match &self.cleanup {
            Cleanup::Directory(path) => {
                let _ = std::fs::remove_dir_all(path);
            }
            Cleanup::ServerDatabase { base_url, name } => {
                let Ok(mut admin) = AnyConnection::connect(base_url).await else {
                    return;
                };
                let drop_statement = match self.backend {
                    // FORCE ends sessions a panicking test left open.
                    Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    Backend::MariaDb | Backend::Sqlite => {
                        format!("DROP DATABASE IF EXISTS {name}")
                    }
                };
                if let Err(error) = sqlx::raw_sql(&drop_statement).execute(&mut admin).await {
                    eprintln!("could not drop the test database {name}: {error}");
                }
                let _ = admin.close().await;
            }
        }
    }
}

async fn connect_to_server(backend: Backend, base_url: &str, variable: &str) -> AnyConnection {
    AnyConnection::connect(base_url)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "the {backend:?} test server is not reachable at {} ({error}). Start the servers \
             with `.ci/services.sh`, or point {variable} at one.",
                redacted(base_url)
            )
        })
}

/// `base_url` with its path replaced by `/database`, keeping the query string.
pub fn with_database(base_url: &str, database: &str) -> String {
    let (without_query, query) = match base_url.split_once('?') {
        Some((without_query, query)) => (without_query, Some(query)),
        None => (base_url, None),
    };
    let authority_start = without_query.find("://").map_or(0, |index| index + 3);
    let path_start = without_query[authority_start..]
        .find('/')
        .map_or(without_query.len(), |index| authority_start + index);
    let mut url = format!("{}/{database}", &without_query[..path_start]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// `url` without the password of its user info, for messages.
fn redacted(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |index| index + 3);
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |index| authority_start + index);
    let authority = &url[authority_start..authority_end];
    match authority.rsplit_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!(
                "{}{user}:***@{host}{}",
                &url[..authority_start],
                &url[authority_end..]
            )
        }
        _ => url.to_owned(),
    }
}

/// Runs `body` on a fresh database of `backend` and removes the database afterwards, also when
/// the body panics (the panic is then resumed, so the test still fails with its message).
pub async fn run_on<Body, Outcome>(backend: Backend, test_name: &str, body: Body)
where
    Body: FnOnce(TestDatabase) -> Outcome,
    Outcome: Future<Output = ()> + Send + 'static,
{
    let database = TestDatabase::create(backend, test_name).await;
    let outcome = tokio::spawn(body(database.clone())).await;
    database.remove().await;
    if let Err(join_error) = outcome {
        match join_error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(join_error) => panic!("the test body did not finish: {join_error}"),
        }
    }
}

/// Declares `<test>::sqlite`, `<test>::mariadb` and `<test>::postgres`, each running the async
/// function `<test>(database: TestDatabase)` on a fresh database of that backend.
/// `multi_thread:` before the name runs them on a multi-threaded runtime (for races).
macro_rules! on_every_backend {
    ($test:ident) => {
        $crate::support::on_every_backend!(@declare () $test [sqlite Sqlite] [mariadb MariaDb] [postgres Postgres]);
    };
    (multi_thread: $test:ident) => {
        $crate::support::on_every_backend!(@declare (flavor = "multi_thread", worker_threads = 4) $test
            [sqlite Sqlite] [mariadb MariaDb] [postgres Postgres]);
    };
    (@declare $runtime:tt $test:ident $([$case:ident $backend:ident])*) => {
        mod $test {
            $(
                #[tokio::test $runtime]
                async fn $case() {
                    $crate::support::run_on(
                        $crate::support::Backend::$backend,
                        stringify!($test),
                        super::$test,
                    )
                    .await;
                }
            )*
        }
    };
}

/// Like `on_every_backend!`, for behaviour only the database servers have (locks between
/// sessions): declares `<test>::mariadb` and `<test>::postgres`.
macro_rules! on_server_backends {
    ($test:ident) => {
        $crate::support::on_every_backend!(@declare () $test [mariadb MariaDb] [postgres Postgres]);
    };
}

pub(crate) use {on_every_backend, on_server_backends};

#[test]
fn server_urls_get_the_test_database_and_keep_their_options() {
    assert_eq!(
        with_database("mysql://root@127.0.0.1:3306/test", "relay_t_1"),
        "mysql://root@127.0.0.1:3306/relay_t_1"
    );
    assert_eq!(
        with_database("postgres://u:p@db/test?sslmode=disable", "x"),
        "postgres://u:p@db/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://db", "x"), "postgres://db/x");
    assert_eq!(
        redacted("postgres://user:secret@db:5432/test"),
        "postgres://user:***@db:5432/test"
    );
    assert_eq!(redacted("mysql://root@db/test"), "mysql://root@db/test");
}
