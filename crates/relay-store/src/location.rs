//! Where the database lives: parsing `DATABASE_URL` and resolving SQLite file paths.
//!
//! Kept apart from connecting so that path resolution can be tested without a database and
//! without changing the process's working directory.

use std::path::{Path, PathBuf};

use crate::dialect::Dialect;
use crate::error::StoreError;

/// The SQLite file used when `DATABASE_URL` is not set, relative to the working directory.
pub const DEFAULT_SQLITE_PATH: &str = "./data/relay.db";

/// The database named by `DATABASE_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A SQLite file, as written by the operator: a relative path is resolved against a base
    /// directory (the working directory) when connecting.
    SqliteFile(PathBuf),
    /// A database server, reached with the URL as given.
    Server { dialect: Dialect, url: String },
}

impl DatabaseLocation {
    /// Parses `DATABASE_URL`; `None` (or an empty value) means the default SQLite file.
    ///
    /// SQLite accepts `sqlite://PATH` and `sqlite:PATH`, where PATH is relative
    /// (`sqlite://data/relay.db`) or absolute (`sqlite:///var/lib/relay.db`). The path is taken
    /// literally (no percent-decoding) and query parameters are refused, because the store
    /// chooses the connection options itself.
    pub fn parse(database_url: Option<&str>) -> Result<DatabaseLocation, StoreError> {
        let database_url = match database_url.map(str::trim) {
            None | Some("") => return Ok(DatabaseLocation::SqliteFile(DEFAULT_SQLITE_PATH.into())),
            Some(database_url) => database_url,
        };
        let dialect = Dialect::from_url(database_url)?;
        if dialect != Dialect::Sqlite {
            return Ok(DatabaseLocation::Server {
                dialect,
                url: database_url.to_owned(),
            });
        }
        // The scheme is matched case-insensitively by `Dialect::from_url`; strip it likewise.
        let after_scheme = &database_url["sqlite:".len()..];
        let path = after_scheme.strip_prefix("//").unwrap_or(after_scheme);
        if path.contains('?') {
            return Err(StoreError::InvalidUrl(
                "query parameters are not supported in a sqlite: URL; the relay sets WAL mode, \
                 the busy timeout and foreign keys itself"
                    .into(),
            ));
        }
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::InvalidUrl(
                "a sqlite: URL must name a file, as sqlite://data/relay.db or sqlite:///abs/relay.db"
                    .into(),
            ));
        }
        Ok(DatabaseLocation::SqliteFile(PathBuf::from(path)))
    }

    /// The dialect the location is spoken in.
    pub fn dialect(&self) -> Dialect {
        match self {
            DatabaseLocation::SqliteFile(_) => Dialect::Sqlite,
            DatabaseLocation::Server { dialect, .. } => *dialect,
        }
    }

    /// For a SQLite location, the path of the file: a relative path is joined to
    /// `base_directory`, an absolute one is kept. `None` for a server.
    ///
    /// `..` is deliberately not folded here: only the file system knows whether a component is
    /// a symbolic link, so connecting resolves the path after creating its directories.
    pub fn sqlite_file_path(&self, base_directory: &Path) -> Option<PathBuf> {
        match self {
            DatabaseLocation::SqliteFile(path) => Some(base_directory.join(path)),
            DatabaseLocation::Server { .. } => None,
        }
    }
}

/// Shows the dialect and the SQLite path, never a server URL: it may carry a password.
impl std::fmt::Debug for DatabaseLocation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseLocation::SqliteFile(path) => {
                formatter.debug_tuple("SqliteFile").field(path).finish()
            }
            DatabaseLocation::Server { dialect, .. } => formatter
                .debug_struct("Server")
                .field("dialect", dialect)
                .finish_non_exhaustive(),
        }
    }
}

/// Builds the URL the Any driver is given for a SQLite file: absolute, percent-encoded so
/// that `?`, `#`, `%` and spaces in the path survive URL parsing, and with `mode=rwc` so that
/// SQLite creates the file when it is missing.
pub(crate) fn sqlite_driver_url(absolute_path: &Path) -> Result<String, StoreError> {
    let path_text = absolute_path.to_str().ok_or_else(|| {
        StoreError::InvalidUrl(format!(
            "the SQLite path {} is not valid UTF-8",
            absolute_path.display()
        ))
    })?;
    let mut url = String::from("sqlite://");
    for byte in path_text.bytes() {
        let keep = byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'-' | b'_' | b'.' | b'~');
        if keep {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_urls_escape_characters_that_urls_give_meaning_to() {
        let url = sqlite_driver_url(Path::new("/tmp/odd dir/a?b#c%d.db"));
        assert_eq!(
            url.ok().as_deref(),
            Some("sqlite:///tmp/odd%20dir/a%3Fb%23c%25d.db?mode=rwc")
        );
    }
}
