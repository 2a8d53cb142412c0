//! The SQL dialects the store speaks, and every place where they differ.
//!
//! Queries are written once, with `?` placeholders and SQL that MySQL/MariaDB, PostgreSQL and
//! SQLite all accept. The few constructs that have no common spelling (placeholders, upsert,
//! the id of the row just inserted, integer sums, write transactions) are produced here, so
//! that adding a dialect means reading this one file.

use std::borrow::Cow;

use crate::error::StoreError;

/// A family of SQL databases the store can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// An embedded SQLite file: the zero-setup default.
    Sqlite,
    /// MySQL 5.7+ or MariaDB, for several relay instances sharing one database.
    MySql,
    /// PostgreSQL, for several relay instances sharing one database.
    Postgres,
}

impl Dialect {
    /// Chooses the dialect from the scheme of a database URL.
    ///
    /// The error names only the scheme: a URL may carry a password and must not be echoed.
    pub fn from_url(database_url: &str) -> Result<Dialect, StoreError> {
        let scheme = database_url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .ok_or_else(|| {
                StoreError::InvalidUrl(
                    "the URL has no scheme; expected sqlite:, mysql:, mariadb: or postgres:".into(),
                )
            })?;
        match scheme.as_str() {
            "sqlite" => Ok(Dialect::Sqlite),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            other => Err(StoreError::InvalidUrl(format!(
                "unsupported scheme `{other}`; expected sqlite:, mysql:, mariadb: or postgres:"
            ))),
        }
    }

    /// The dialect's name, for logs and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::MySql => "mysql",
            Dialect::Postgres => "postgres",
        }
    }

    /// Rewrites the `?` placeholders of `sql` into the dialect's own spelling.
    ///
    /// SQLite and MySQL take `?` as written; PostgreSQL numbers its parameters `$1..$n`.
    /// Question marks inside quoted literals or identifiers are left alone.
    pub(crate) fn placeholders(self, sql: &str) -> Cow<'_, str> {
        if self != Dialect::Postgres || !sql.contains('?') {
            return Cow::Borrowed(sql);
        }
        let mut translated = String::with_capacity(sql.len() + 16);
        let mut open_quote: Option<char> = None;
        let mut parameter_number = 0_usize;
        for character in sql.chars() {
            match (open_quote, character) {
                (None, '?') => {
                    parameter_number += 1;
                    translated.push('$');
                    translated.push_str(&parameter_number.to_string());
                    continue;
                }
                (None, '\'' | '"' | '`') => open_quote = Some(character),
                (Some(quote), _) if quote == character => open_quote = None,
                _ => {}
            }
            translated.push(character);
        }
        Cow::Owned(translated)
    }

    /// An insert that replaces the non-key columns of the row when the key already exists,
    /// in one statement, so that concurrent writers cannot both see "absent" and collide.
    ///
    /// All columns are bound in the order `key_columns` then `value_columns`.
    pub(crate) fn upsert(
        self,
        table: &str,
        key_columns: &[&str],
        value_columns: &[&str],
    ) -> String {
        let all_columns: Vec<&str> = key_columns.iter().chain(value_columns).copied().collect();
        let placeholders = vec!["?"; all_columns.len()].join(", ");
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({placeholders})",
            all_columns.join(", ")
        );
        match self {
            Dialect::Sqlite | Dialect::Postgres => {
                let assignments: Vec<String> = value_columns
                    .iter()
                    .map(|column| format!("{column} = excluded.{column}"))
                    .collect();
                format!(
                    "{insert} ON CONFLICT ({}) DO UPDATE SET {}",
                    key_columns.join(", "),
                    assignments.join(", ")
                )
            }
            Dialect::MySql => {
                // `VALUES(column)` is what MariaDB and MySQL 5.7 understand; MySQL 8 still
                // accepts it.
                let assignments: Vec<String> = value_columns
                    .iter()
                    .map(|column| format!("{column} = VALUES({column})"))
                    .collect();
                format!(
                    "{insert} ON DUPLICATE KEY UPDATE {}",
                    assignments.join(", ")
                )
            }
        }
    }

    /// A query, run on the same connection right after an `INSERT`, that answers the id the
    /// database gave the new row.
    ///
    /// `RETURNING` would be shorter but MySQL lacks it, and the Any driver does not report
    /// SQLite's last insert id; each database's session function works everywhere.
    pub(crate) fn last_insert_id_query(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SELECT last_insert_rowid()",
            // LAST_INSERT_ID() is BIGINT UNSIGNED, which the Any driver does not decode.
            Dialect::MySql => "SELECT CAST(LAST_INSERT_ID() AS SIGNED)",
            Dialect::Postgres => "SELECT lastval()",
        }
    }

    /// The statement that opens a transaction which is going to write.
    ///
    /// SQLite's default deferred transaction takes the write lock only at its first write, and
    /// a reader that later wants to write can fail at once with `SQLITE_BUSY` instead of
    /// waiting; `BEGIN IMMEDIATE` takes the lock up front, where the busy timeout applies.
    /// The servers lock rows as they go and need nothing special.
    pub(crate) fn begin_write_statement(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => Some("BEGIN IMMEDIATE"),
            Dialect::MySql | Dialect::Postgres => None,
        }
    }

    /// Whether a statement that binds a `NULL` may stay in the connection's statement cache.
    ///
    /// The Any driver sends `NULL` without its column's type; PostgreSQL fixes a parameter's
    /// type from its first use and would refuse a real value bound to the same cached
    /// statement later. SQLite and MySQL take each execution's values as they come, so a usage
    /// batch holding a failed attempt (no status, no first byte) need not prepare its 100-row
    /// statement anew.
    pub(crate) fn caches_statements_with_nulls(self) -> bool {
        self != Dialect::Postgres
    }

    /// Rows per multi-row `INSERT` of a usage batch (each row binds 17 values, far below
    /// every dialect's limit on bound parameters).
    ///
    /// SQLite runs in the relay's process, on a thread of its own that holds a core for as
    /// long as a statement runs; a request worker woken on that core waits until the
    /// statement ends, since the scheduler lets the running thread finish its time slice.
    /// 100 rows took ~0.3 ms on the benchmark machine and were the most frequent cause of a
    /// worker waiting over 0.1 ms at concurrency 1 (117 waits in 3 s); 16 rows take ~0.05 ms
    /// (12 waits), for no more instructions per row. A server does the work in its own
    /// process, where larger statements save round trips.
    pub(crate) fn insert_rows_per_statement(self) -> usize {
        match self {
            Dialect::Sqlite => 16,
            Dialect::MySql | Dialect::Postgres => 100,
        }
    }

    /// The verb of the usage batch's multi-row `INSERT`s.
    ///
    /// Inside a transaction SQLite keeps a statement journal for every statement that may
    /// abort half-way (any `INSERT` into a table with `NOT NULL` columns): a copy of each page
    /// before the statement first changes it, spilled to a temporary file past 64 KiB. For a
    /// 100-row `INSERT` that was most of the writer's file writes. `OR FAIL` stops a failing
    /// statement where it is without undoing its own earlier rows, so no journal is kept; the
    /// batch's transaction is rolled back on any error all the same, so nothing of a failed
    /// batch stays either way. The servers have no such journal.
    pub(crate) fn batch_insert_verb(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INSERT OR FAIL",
            Dialect::MySql | Dialect::Postgres => "INSERT",
        }
    }

    /// `SUM` of an integer column as a signed 64-bit integer, zero over no rows.
    ///
    /// PostgreSQL sums BIGINT into NUMERIC and MySQL into DECIMAL, neither of which the Any
    /// driver decodes, so the sum is cast back.
    pub(crate) fn sum_integer(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("COALESCE(SUM({column}), 0)"),
            Dialect::MySql => format!("CAST(COALESCE(SUM({column}), 0) AS SIGNED)"),
            Dialect::Postgres => format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT)"),
        }
    }

    /// `SUM` of a DOUBLE column, zero over no rows.
    pub(crate) fn sum_double(self, column: &str) -> String {
        match self {
            Dialect::Sqlite | Dialect::MySql => format!("COALESCE(SUM({column}), 0.0)"),
            Dialect::Postgres => format!("CAST(COALESCE(SUM({column}), 0) AS DOUBLE PRECISION)"),
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_in_order() {
        let sql = "UPDATE t SET a = ?, b = ? WHERE id = ?";
        assert_eq!(
            Dialect::Postgres.placeholders(sql),
            "UPDATE t SET a = $1, b = $2 WHERE id = $3"
        );
        assert_eq!(Dialect::Sqlite.placeholders(sql), sql);
        assert_eq!(Dialect::MySql.placeholders(sql), sql);
    }

    #[test]
    fn question_marks_inside_literals_are_not_placeholders() {
        let sql = "SELECT '?', \"odd?name\", 'it''s ?' FROM t WHERE a = ? AND b = '?'";
        assert_eq!(
            Dialect::Postgres.placeholders(sql),
            "SELECT '?', \"odd?name\", 'it''s ?' FROM t WHERE a = $1 AND b = '?'"
        );
    }

    #[test]
    fn the_scheme_chooses_the_dialect() {
        assert_eq!(
            Dialect::from_url("sqlite://x.db").ok(),
            Some(Dialect::Sqlite)
        );
        assert_eq!(Dialect::from_url("sqlite:x.db").ok(), Some(Dialect::Sqlite));
        assert_eq!(
            Dialect::from_url("mysql://u:p@h/db").ok(),
            Some(Dialect::MySql)
        );
        assert_eq!(
            Dialect::from_url("mariadb://u:p@h/db").ok(),
            Some(Dialect::MySql)
        );
        assert_eq!(
            Dialect::from_url("postgres://u:p@h/db").ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::from_url("postgresql://h/db").ok(),
            Some(Dialect::Postgres)
        );
    }

    #[test]
    fn an_unknown_scheme_is_refused_without_echoing_the_url() {
        match Dialect::from_url("redis://user:secret@host/0") {
            Err(StoreError::InvalidUrl(message)) => {
                assert!(message.contains("redis"), "{message}");
                assert!(!message.contains("secret"), "{message}");
            }
            other => panic!("expected InvalidUrl, got {other:?}"),
        }
        assert!(matches!(
            Dialect::from_url("no-scheme-here"),
            Err(StoreError::InvalidUrl(_))
        ));
    }

    #[test]
    fn upsert_uses_each_dialects_spelling() {
        let columns = (["k"], ["v", "u"]);
        assert_eq!(
            Dialect::Sqlite.upsert("s", &columns.0, &columns.1),
            "INSERT INTO s (k, v, u) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v, u = excluded.u"
        );
        assert_eq!(
            Dialect::MySql.upsert("s", &columns.0, &columns.1),
            "INSERT INTO s (k, v, u) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v), u = VALUES(u)"
        );
        assert!(Dialect::Postgres
            .upsert("s", &columns.0, &columns.1)
            .ends_with("ON CONFLICT (k) DO UPDATE SET v = excluded.v, u = excluded.u"));
    }
}
