//! Small named values the relay keeps across restarts (the fallback configuration changed
//! through the admin API, the admin token's hash), as text the caller encodes.

use std::future::Future;

use crate::error::StoreError;
use crate::store::{now_millis, SqlStore};
use crate::values::read_text;

/// Persistence of settings.
pub trait SettingsStore: Send + Sync {
    fn get_setting(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Creates or replaces the setting in one statement (a portable upsert), so two writers
    /// never collide on "not there yet".
    fn put_setting(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl SettingsStore for SqlStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            &self.sql("SELECT setting_value FROM relay_settings WHERE setting_key = ?"),
        )
        .bind(key)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref()
            .map(|row| read_text(row, "setting_value"))
            .transpose()
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let upsert = self.dialect().upsert(
            "relay_settings",
            &["setting_key"],
            &["setting_value", "updated_at"],
        );
        sqlx::query(&self.sql(&upsert))
            .bind(key)
            .bind(value)
            .bind(now_millis())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
