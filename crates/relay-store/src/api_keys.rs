//! Relay API keys: what clients present, stored as hashes.

use std::future::Future;

use relay_core::model::{ApiKey, ApiKeyId, GroupId};
use relay_core::UnixMillis;
use sqlx::any::AnyRow;

use crate::error::{conflict_on_constraint, StoreError};
use crate::store::{now_millis, SqlStore};
use crate::values::{
    bind_values, json_text, read_bool, read_i64, read_json, read_optional_f64, read_optional_i64,
    read_optional_u32, read_text, SqlValue,
};

/// An API key to create. The caller generates the plain key, shows it once, and passes only
/// its hash and prefix here.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    pub name: String,
    pub group_id: GroupId,
    /// Hex SHA-256 of the plain key; unique.
    pub key_hash: String,
    pub key_prefix: String,
    pub enabled: bool,
    pub expires_at: Option<UnixMillis>,
    pub model_allowlist: Vec<String>,
    pub daily_cost_limit_usd: Option<f64>,
    pub rpm_limit: Option<u32>,
}

/// A partial update of an API key: `None` leaves a field as it is; for the optional fields
/// `Some(None)` clears the value. The hash cannot change: a new secret is a new key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiKeyUpdate {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub group_id: Option<GroupId>,
    pub expires_at: Option<Option<UnixMillis>>,
    pub daily_cost_limit_usd: Option<Option<f64>>,
    pub rpm_limit: Option<Option<u32>>,
    pub model_allowlist: Option<Vec<String>>,
}

/// Persistence of relay API keys.
pub trait ApiKeyStore: Send + Sync {
    /// Creates a key; a `group_id` that names no group, or a hash already stored, is `Conflict`.
    fn create_api_key(
        &self,
        new_api_key: NewApiKey,
    ) -> impl Future<Output = Result<ApiKey, StoreError>> + Send;

    fn get_api_key(
        &self,
        api_key_id: ApiKeyId,
    ) -> impl Future<Output = Result<Option<ApiKey>, StoreError>> + Send;

    /// The key whose hash is `key_hash`: how a client's key is recognised.
    fn find_api_key_by_hash(
        &self,
        key_hash: &str,
    ) -> impl Future<Output = Result<Option<ApiKey>, StoreError>> + Send;

    /// The keys of one group, or all, by id.
    fn list_api_keys(
        &self,
        group_id: Option<GroupId>,
    ) -> impl Future<Output = Result<Vec<ApiKey>, StoreError>> + Send;

    /// Applies `update`; `Ok(None)` when the key does not exist, `Conflict` when the new
    /// `group_id` names no group.
    fn update_api_key(
        &self,
        api_key_id: ApiKeyId,
        update: ApiKeyUpdate,
    ) -> impl Future<Output = Result<Option<ApiKey>, StoreError>> + Send;

    /// Deletes a key; `Ok(false)` when it did not exist. Its usage rows are kept.
    fn delete_api_key(
        &self,
        api_key_id: ApiKeyId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

const API_KEY_COLUMNS: &str = "id, name, group_id, key_hash, key_prefix, enabled, expires_at, \
     model_allowlist, daily_cost_limit_usd, rpm_limit, created_at, updated_at";

fn api_key_from_row(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: read_i64(row, "id")?,
        name: read_text(row, "name")?,
        group_id: read_i64(row, "group_id")?,
        key_hash: read_text(row, "key_hash")?,
        key_prefix: read_text(row, "key_prefix")?,
        enabled: read_bool(row, "enabled")?,
        expires_at: read_optional_i64(row, "expires_at")?,
        model_allowlist: read_json(row, "model_allowlist")?,
        daily_cost_limit_usd: read_optional_f64(row, "daily_cost_limit_usd")?,
        rpm_limit: read_optional_u32(row, "rpm_limit")?,
        created_at: read_i64(row, "created_at")?,
        updated_at: read_i64(row, "updated_at")?,
    })
}

fn missing_group(group_id: GroupId) -> StoreError {
    StoreError::Conflict(format!("group {group_id} does not exist"))
}

impl SqlStore {
    async fn select_api_key(
        &self,
        where_clause: &str,
        value: SqlValue,
    ) -> Result<Option<ApiKey>, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {API_KEY_COLUMNS} FROM relay_api_keys WHERE {where_clause}"
            ))
            .into_owned();
        let row = bind_values(sqlx::query(&sql), &[value])
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }
}

impl ApiKeyStore for SqlStore {
    async fn create_api_key(&self, new_api_key: NewApiKey) -> Result<ApiKey, StoreError> {
        let now = now_millis();
        let values = [
            SqlValue::text(new_api_key.name.clone()),
            SqlValue::big_int(new_api_key.group_id),
            SqlValue::text(new_api_key.key_hash.clone()),
            SqlValue::text(new_api_key.key_prefix.clone()),
            SqlValue::boolean(new_api_key.enabled),
            SqlValue::BigInt(new_api_key.expires_at),
            SqlValue::text(json_text(
                &new_api_key.model_allowlist,
                "the model allowlist",
            )?),
            SqlValue::Double(new_api_key.daily_cost_limit_usd),
            SqlValue::BigInt(new_api_key.rpm_limit.map(i64::from)),
            SqlValue::big_int(now),
            SqlValue::big_int(now),
        ];
        let sql = self
            .sql(
                "INSERT INTO relay_api_keys (name, group_id, key_hash, key_prefix, enabled, \
                 expires_at, model_allowlist, daily_cost_limit_usd, rpm_limit, created_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .into_owned();

        let mut transaction = self.begin_write().await?;
        if !self
            .row_exists(&mut transaction, "relay_groups", new_api_key.group_id)
            .await?
        {
            return Err(missing_group(new_api_key.group_id));
        }
        let id = self
            .insert_returning_id(&mut transaction, bind_values(sqlx::query(&sql), &values))
            .await
            .map_err(|error| match error {
                StoreError::Database(error) => conflict_on_constraint(error, || {
                    "an API key with the same hash already exists".to_owned()
                }),
                other => other,
            })?;
        transaction.commit().await?;
        Ok(ApiKey {
            id,
            name: new_api_key.name,
            group_id: new_api_key.group_id,
            key_hash: new_api_key.key_hash,
            key_prefix: new_api_key.key_prefix,
            enabled: new_api_key.enabled,
            expires_at: new_api_key.expires_at,
            model_allowlist: new_api_key.model_allowlist,
            daily_cost_limit_usd: new_api_key.daily_cost_limit_usd,
            rpm_limit: new_api_key.rpm_limit,
            created_at: now,
            updated_at: now,
        })
    }

    async fn get_api_key(&self, api_key_id: ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        self.select_api_key("id = ?", SqlValue::big_int(api_key_id))
            .await
    }

    async fn find_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        self.select_api_key("key_hash = ?", SqlValue::text(key_hash))
            .await
    }

    async fn list_api_keys(&self, group_id: Option<GroupId>) -> Result<Vec<ApiKey>, StoreError> {
        let rows = match group_id {
            Some(group_id) => {
                let sql = self
                    .sql(&format!(
                        "SELECT {API_KEY_COLUMNS} FROM relay_api_keys WHERE group_id = ? ORDER BY id"
                    ))
                    .into_owned();
                sqlx::query(&sql)
                    .bind(group_id)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                let sql = format!("SELECT {API_KEY_COLUMNS} FROM relay_api_keys ORDER BY id");
                sqlx::query(&sql).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(api_key_from_row).collect()
    }

    async fn update_api_key(
        &self,
        api_key_id: ApiKeyId,
        update: ApiKeyUpdate,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut assignments: Vec<&str> = Vec::new();
        let mut values = Vec::new();
        if let Some(name) = update.name {
            assignments.push("name = ?");
            values.push(SqlValue::text(name));
        }
        if let Some(enabled) = update.enabled {
            assignments.push("enabled = ?");
            values.push(SqlValue::boolean(enabled));
        }
        if let Some(group_id) = update.group_id {
            assignments.push("group_id = ?");
            values.push(SqlValue::big_int(group_id));
        }
        if let Some(expires_at) = update.expires_at {
            assignments.push("expires_at = ?");
            values.push(SqlValue::BigInt(expires_at));
        }
        if let Some(daily_cost_limit_usd) = update.daily_cost_limit_usd {
            assignments.push("daily_cost_limit_usd = ?");
            values.push(SqlValue::Double(daily_cost_limit_usd));
        }
        if let Some(rpm_limit) = update.rpm_limit {
            assignments.push("rpm_limit = ?");
            values.push(SqlValue::BigInt(rpm_limit.map(i64::from)));
        }
        if let Some(model_allowlist) = &update.model_allowlist {
            assignments.push("model_allowlist = ?");
            values.push(SqlValue::text(json_text(
                model_allowlist,
                "the model allowlist",
            )?));
        }
        assignments.push("updated_at = ?");
        values.push(SqlValue::big_int(now_millis()));
        values.push(SqlValue::big_int(api_key_id));
        let sql = self
            .sql(&format!(
                "UPDATE relay_api_keys SET {} WHERE id = ?",
                assignments.join(", ")
            ))
            .into_owned();

        let mut transaction = self.begin_write().await?;
        if let Some(group_id) = update.group_id {
            if !self
                .row_exists(&mut transaction, "relay_groups", group_id)
                .await?
            {
                return Err(missing_group(group_id));
            }
        }
        bind_values(sqlx::query(&sql), &values)
            .execute(&mut *transaction)
            .await
            .map_err(|error| {
                conflict_on_constraint(error, || {
                    format!(
                        "group {} does not exist",
                        update.group_id.unwrap_or_default()
                    )
                })
            })?;
        transaction.commit().await?;
        // Read back rather than trust `rows_affected`: MySQL counts only changed rows.
        self.get_api_key(api_key_id).await
    }

    async fn delete_api_key(&self, api_key_id: ApiKeyId) -> Result<bool, StoreError> {
        let deleted = sqlx::query(&self.sql("DELETE FROM relay_api_keys WHERE id = ?"))
            .bind(api_key_id)
            .execute(self.pool())
            .await?;
        Ok(deleted.rows_affected() > 0)
    }
}
