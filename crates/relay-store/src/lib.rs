//! Persistence for the relay: groups, accounts (with their secrets), API keys, usage rows and
//! counters, and settings, over sqlx.
//!
//! SQLite is the zero-setup default; MySQL 5.7+/MariaDB and PostgreSQL serve cluster mode,
//! where several relay instances share one database. The three behave the same (one set of
//! migrations per dialect, one `Dialect` that owns every difference in spelling), and the
//! integration suite runs every test body on all three. On the servers the first start of any
//! instance creates the schema under a database lock, so instances may start together.
//!
//! Known differences, all in what the servers refuse: MySQL caps group names at 191
//! characters (a unique utf8mb4 index must fit MySQL 5.7's key limit), and both servers cap the
//! short identifier columns (`request_id` 128, `key_hash` 128, `key_prefix` 64,
//! `outcome_class` 64, `platform` 32) where SQLite stores any length. A longer value fails the
//! write with `StoreError::Database`, so callers validate lengths before writing.
//!
//! Architecture Invariant: only this crate knows SQL. Queries are written once with `?`
//! placeholders in SQL the three dialects share, and go through the Any driver without
//! compile-time checked macros, so the crate builds without a database.
//!
//! Architecture Invariant: an account's secret is read and written only by
//! `credential::{encode_credential, decode_credential}` (which seal and open it when a
//! `CredentialKey` is set); `Account` never carries it.
//!
//! Each query family is a trait (`GroupStore`, `AccountStore`, `ApiKeyStore`, `UsageStore`,
//! `SettingsStore`) implemented by `SqlStore`, so callers can substitute a fake in tests.

mod accounts;
mod api_keys;
mod credential;
mod dialect;
mod error;
mod groups;
mod location;
mod migrate;
mod settings;
mod store;
mod usage;
mod values;

pub use accounts::{AccountStore, AccountUpdate, NewAccount};
pub use api_keys::{ApiKeyStore, ApiKeyUpdate, NewApiKey};
pub use credential::CredentialKey;
pub use dialect::Dialect;
pub use error::StoreError;
pub use groups::{GroupStore, GroupUpdate, NewGroup};
pub use location::{DatabaseLocation, DEFAULT_SQLITE_PATH};
pub use settings::SettingsStore;
pub use store::SqlStore;
pub use usage::{UsageCounters, UsageFilter, UsageRow, UsageStore, UsageTotals};
