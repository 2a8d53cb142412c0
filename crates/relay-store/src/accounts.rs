//! Upstream accounts, their secrets, and their usage counters.

use std::collections::BTreeMap;
use std::future::Future;

use relay_core::model::{Account, AccountId, Credential, GroupId, OAuthCredential, Platform};
use sqlx::any::AnyRow;

use crate::credential::{
    decode_credential, encode_credential, holds_plain_secret, CREDENTIAL_COLUMNS,
};
use crate::error::{conflict_on_constraint, StoreError};
use crate::store::{now_millis, SqlStore};
use crate::usage::{counters_from_row, UsageCounters, COUNTER_COLUMNS};
use crate::values::{
    bind_values, json_text, read_bool, read_i32, read_i64, read_json, read_optional_text,
    read_optional_u32, read_text, read_u32, SqlValue,
};

/// An account to create, with its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAccount {
    pub name: String,
    pub platform: Platform,
    pub base_url: String,
    pub group_id: GroupId,
    pub priority: i32,
    pub weight: u32,
    pub enabled: bool,
    pub proxy_url: Option<String>,
    pub model_allowlist: Vec<String>,
    pub model_mapping: BTreeMap<String, String>,
    pub max_concurrency: Option<u32>,
    pub credential: Credential,
}

/// A partial update of an account: `None` leaves a field as it is. For the optional fields,
/// `Some(None)` clears the value (a JSON `null` in the admin API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountUpdate {
    pub name: Option<String>,
    pub platform: Option<Platform>,
    pub base_url: Option<String>,
    pub group_id: Option<GroupId>,
    pub priority: Option<i32>,
    pub weight: Option<u32>,
    pub enabled: Option<bool>,
    pub proxy_url: Option<Option<String>>,
    pub model_allowlist: Option<Vec<String>>,
    pub model_mapping: Option<BTreeMap<String, String>>,
    pub max_concurrency: Option<Option<u32>>,
    pub credential: Option<Credential>,
}

/// Persistence of accounts. `Account` never carries the secret: it is read only through
/// `get_credential` and `list_accounts_with_credentials`, so a handler that serialises an
/// account cannot leak it by accident.
pub trait AccountStore: Send + Sync {
    /// Creates an account; a `group_id` that names no group is `Conflict`.
    fn create_account(
        &self,
        new_account: NewAccount,
    ) -> impl Future<Output = Result<Account, StoreError>> + Send;

    fn get_account(
        &self,
        account_id: AccountId,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;

    fn get_credential(
        &self,
        account_id: AccountId,
    ) -> impl Future<Output = Result<Option<Credential>, StoreError>> + Send;

    /// The accounts of one group, or all, by id.
    fn list_accounts(
        &self,
        group_id: Option<GroupId>,
    ) -> impl Future<Output = Result<Vec<Account>, StoreError>> + Send;

    /// Every account with its secret, by id: what the data plane loads at start.
    fn list_accounts_with_credentials(
        &self,
    ) -> impl Future<Output = Result<Vec<(Account, Credential)>, StoreError>> + Send;

    /// Applies `update`; `Ok(None)` when the account does not exist, `Conflict` when the new
    /// `group_id` names no group.
    fn update_account(
        &self,
        account_id: AccountId,
        update: AccountUpdate,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;

    /// Deletes an account; `Ok(false)` when it did not exist. Its usage rows are kept.
    fn delete_account(
        &self,
        account_id: AccountId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores OAuth tokens after a refresh (the refresh token rotates, so losing this write
    /// would lock the account out). `NotFound` when the account does not exist.
    fn save_oauth_tokens(
        &self,
        account_id: AccountId,
        tokens: &OAuthCredential,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The account's lifetime usage over successful attempts; `NotFound` when it does not
    /// exist.
    fn account_usage_counters(
        &self,
        account_id: AccountId,
    ) -> impl Future<Output = Result<UsageCounters, StoreError>> + Send;
}

const ACCOUNT_COLUMNS: &str = "id, name, platform, base_url, group_id, priority, weight, \
     enabled, proxy_url, model_allowlist, model_mapping, max_concurrency, created_at, updated_at";

fn account_from_row(row: &AnyRow) -> Result<Account, StoreError> {
    let platform_name = read_text(row, "platform")?;
    let platform = Platform::parse(&platform_name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown platform `{platform_name}`")))?;
    Ok(Account {
        id: read_i64(row, "id")?,
        name: read_text(row, "name")?,
        platform,
        base_url: read_text(row, "base_url")?,
        group_id: read_i64(row, "group_id")?,
        priority: read_i32(row, "priority")?,
        weight: read_u32(row, "weight")?,
        enabled: read_bool(row, "enabled")?,
        proxy_url: read_optional_text(row, "proxy_url")?,
        model_allowlist: read_json(row, "model_allowlist")?,
        model_mapping: read_json(row, "model_mapping")?,
        max_concurrency: read_optional_u32(row, "max_concurrency")?,
        created_at: read_i64(row, "created_at")?,
        updated_at: read_i64(row, "updated_at")?,
    })
}

fn missing_group(group_id: GroupId) -> StoreError {
    StoreError::Conflict(format!("group {group_id} does not exist"))
}

impl AccountStore for SqlStore {
    async fn create_account(&self, new_account: NewAccount) -> Result<Account, StoreError> {
        let now = now_millis();
        let model_allowlist = json_text(&new_account.model_allowlist, "the model allowlist")?;
        let model_mapping = json_text(&new_account.model_mapping, "the model mapping")?;
        let mut values = vec![
            SqlValue::text(new_account.name.clone()),
            SqlValue::text(new_account.platform.as_str()),
            SqlValue::text(new_account.base_url.clone()),
            SqlValue::big_int(new_account.group_id),
            SqlValue::Integer(Some(new_account.priority)),
            SqlValue::big_int(i64::from(new_account.weight)),
            SqlValue::boolean(new_account.enabled),
            SqlValue::Text(new_account.proxy_url.clone()),
            SqlValue::text(model_allowlist),
            SqlValue::text(model_mapping),
            SqlValue::BigInt(new_account.max_concurrency.map(i64::from)),
            SqlValue::big_int(now),
            SqlValue::big_int(now),
        ];
        values.extend(encode_credential(
            &new_account.credential,
            self.credential_key(),
        )?);
        let sql = self
            .sql(&format!(
                "INSERT INTO relay_accounts (name, platform, base_url, group_id, priority, weight, \
                 enabled, proxy_url, model_allowlist, model_mapping, max_concurrency, created_at, \
                 updated_at, {}) VALUES ({})",
                CREDENTIAL_COLUMNS.join(", "),
                vec!["?"; values.len()].join(", ")
            ))
            .into_owned();

        let mut transaction = self.begin_write().await?;
        if !self
            .row_exists(&mut transaction, "relay_groups", new_account.group_id)
            .await?
        {
            return Err(missing_group(new_account.group_id));
        }
        let id = self
            .insert_returning_id(&mut transaction, bind_values(sqlx::query(&sql), &values))
            .await
            .map_err(|error| match error {
                StoreError::Database(error) => conflict_on_constraint(error, || {
                    format!("group {} does not exist", new_account.group_id)
                }),
                other => other,
            })?;
        transaction.commit().await?;
        Ok(Account {
            id,
            name: new_account.name,
            platform: new_account.platform,
            base_url: new_account.base_url,
            group_id: new_account.group_id,
            priority: new_account.priority,
            weight: new_account.weight,
            enabled: new_account.enabled,
            proxy_url: new_account.proxy_url,
            model_allowlist: new_account.model_allowlist,
            model_mapping: new_account.model_mapping,
            max_concurrency: new_account.max_concurrency,
            created_at: now,
            updated_at: now,
        })
    }

    async fn get_account(&self, account_id: AccountId) -> Result<Option<Account>, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM relay_accounts WHERE id = ?"
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(account_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn get_credential(
        &self,
        account_id: AccountId,
    ) -> Result<Option<Credential>, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {} FROM relay_accounts WHERE id = ?",
                CREDENTIAL_COLUMNS.join(", ")
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(account_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(|row| decode_credential(row, self.credential_key()))
            .transpose()
    }

    async fn list_accounts(&self, group_id: Option<GroupId>) -> Result<Vec<Account>, StoreError> {
        let rows = match group_id {
            Some(group_id) => {
                let sql = self
                    .sql(&format!(
                        "SELECT {ACCOUNT_COLUMNS} FROM relay_accounts WHERE group_id = ? ORDER BY id"
                    ))
                    .into_owned();
                sqlx::query(&sql)
                    .bind(group_id)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM relay_accounts ORDER BY id");
                sqlx::query(&sql).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(account_from_row).collect()
    }

    async fn list_accounts_with_credentials(
        &self,
    ) -> Result<Vec<(Account, Credential)>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS}, {} FROM relay_accounts ORDER BY id",
            CREDENTIAL_COLUMNS.join(", ")
        );
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    account_from_row(row)?,
                    decode_credential(row, self.credential_key())?,
                ))
            })
            .collect()
    }

    async fn update_account(
        &self,
        account_id: AccountId,
        update: AccountUpdate,
    ) -> Result<Option<Account>, StoreError> {
        let mut assignments: Vec<String> = Vec::new();
        let mut values = Vec::new();
        let mut assign = |column: &str, value: SqlValue| {
            assignments.push(format!("{column} = ?"));
            values.push(value);
        };
        if let Some(name) = update.name {
            assign("name", SqlValue::text(name));
        }
        if let Some(platform) = update.platform {
            assign("platform", SqlValue::text(platform.as_str()));
        }
        if let Some(base_url) = update.base_url {
            assign("base_url", SqlValue::text(base_url));
        }
        if let Some(group_id) = update.group_id {
            assign("group_id", SqlValue::big_int(group_id));
        }
        if let Some(priority) = update.priority {
            assign("priority", SqlValue::Integer(Some(priority)));
        }
        if let Some(weight) = update.weight {
            assign("weight", SqlValue::big_int(i64::from(weight)));
        }
        if let Some(enabled) = update.enabled {
            assign("enabled", SqlValue::boolean(enabled));
        }
        if let Some(proxy_url) = update.proxy_url {
            assign("proxy_url", SqlValue::Text(proxy_url));
        }
        if let Some(model_allowlist) = &update.model_allowlist {
            assign(
                "model_allowlist",
                SqlValue::text(json_text(model_allowlist, "the model allowlist")?),
            );
        }
        if let Some(model_mapping) = &update.model_mapping {
            assign(
                "model_mapping",
                SqlValue::text(json_text(model_mapping, "the model mapping")?),
            );
        }
        if let Some(max_concurrency) = update.max_concurrency {
            assign(
                "max_concurrency",
                SqlValue::BigInt(max_concurrency.map(i64::from)),
            );
        }
        if let Some(credential) = &update.credential {
            let stored = encode_credential(credential, self.credential_key())?;
            for (column, value) in CREDENTIAL_COLUMNS.iter().zip(stored) {
                assign(column, value);
            }
        }
        assign("updated_at", SqlValue::big_int(now_millis()));
        values.push(SqlValue::big_int(account_id));
        let sql = self
            .sql(&format!(
                "UPDATE relay_accounts SET {} WHERE id = ?",
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
        // Read back rather than trust `rows_affected`: MySQL counts only rows whose values
        // changed.
        self.get_account(account_id).await
    }

    async fn delete_account(&self, account_id: AccountId) -> Result<bool, StoreError> {
        let deleted = sqlx::query(&self.sql("DELETE FROM relay_accounts WHERE id = ?"))
            .bind(account_id)
            .execute(self.pool())
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn save_oauth_tokens(
        &self,
        account_id: AccountId,
        tokens: &OAuthCredential,
    ) -> Result<(), StoreError> {
        let mut values: Vec<SqlValue> =
            encode_credential(&Credential::OAuth(tokens.clone()), self.credential_key())?.into();
        values.push(SqlValue::big_int(now_millis()));
        values.push(SqlValue::big_int(account_id));
        let assignments: Vec<String> = CREDENTIAL_COLUMNS
            .iter()
            .map(|column| format!("{column} = ?"))
            .collect();
        let sql = self
            .sql(&format!(
                "UPDATE relay_accounts SET {}, updated_at = ? WHERE id = ?",
                assignments.join(", ")
            ))
            .into_owned();
        let mut transaction = self.begin_write().await?;
        if !self
            .row_exists(&mut transaction, "relay_accounts", account_id)
            .await?
        {
            return Err(StoreError::NotFound);
        }
        bind_values(sqlx::query(&sql), &values)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn account_usage_counters(
        &self,
        account_id: AccountId,
    ) -> Result<UsageCounters, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {COUNTER_COLUMNS} FROM relay_accounts WHERE id = ?"
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(account_id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        counters_from_row(&row)
    }
}

impl SqlStore {
    /// Seals every account secret still stored in plain text, when a key is set (a store
    /// written before `RELAY_ENCRYPTION_KEY` was): called once at start. Returns how many
    /// accounts it sealed.
    pub async fn seal_stored_credentials(&self) -> Result<usize, StoreError> {
        let Some(key) = self.credential_key() else {
            return Ok(0);
        };
        let sql = format!(
            "SELECT id, {} FROM relay_accounts ORDER BY id",
            CREDENTIAL_COLUMNS.join(", ")
        );
        let assignments: Vec<String> = CREDENTIAL_COLUMNS
            .iter()
            .map(|column| format!("{column} = ?"))
            .collect();
        let update_sql = self
            .sql(&format!(
                "UPDATE relay_accounts SET {} WHERE id = ?",
                assignments.join(", ")
            ))
            .into_owned();
        let mut transaction = self.begin_write().await?;
        let rows = sqlx::query(&sql).fetch_all(&mut *transaction).await?;
        let mut sealed = 0;
        for row in &rows {
            if !holds_plain_secret(row)? {
                continue;
            }
            let credential = decode_credential(row, Some(key))?;
            let mut values: Vec<SqlValue> = encode_credential(&credential, Some(key))?.into();
            values.push(SqlValue::big_int(read_i64(row, "id")?));
            bind_values(sqlx::query(&update_sql), &values)
                .execute(&mut *transaction)
                .await?;
            sealed += 1;
        }
        transaction.commit().await?;
        Ok(sealed)
    }
}
