//! Persistence for the relay: groups, accounts (with their secrets), API keys, usage rows and
//! counters, and settings, over sqlx.
//!
//! SQLite is the zero-setup default; MySQL/MariaDB and PostgreSQL are designed in (one set of
//! migrations per dialect, one `Dialect` that owns every difference in spelling) and need only
//! their sqlx driver features to be switched on.
//!
//! Architecture Invariant: only this crate knows SQL. Queries are written once with `?`
//! placeholders in SQL the three dialects share, and go through the Any driver without
//! compile-time checked macros, so the crate builds without a database.
//!
//! Architecture Invariant: an account's secret is read and written only by
//! `credential::{encode_credential, decode_credential}`; `Account` never carries it.
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
pub use dialect::Dialect;
pub use error::StoreError;
pub use groups::{GroupStore, GroupUpdate, NewGroup};
pub use location::{DatabaseLocation, DEFAULT_SQLITE_PATH};
pub use settings::SettingsStore;
pub use store::SqlStore;
pub use usage::{UsageCounters, UsageFilter, UsageRow, UsageStore, UsageTotals};
