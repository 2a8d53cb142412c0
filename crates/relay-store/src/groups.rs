//! Groups: pools of accounts with per-group fallback overrides.

use std::future::Future;

use relay_core::model::{Group, GroupId};
use sqlx::any::AnyRow;

use crate::error::{conflict_on_constraint, StoreError};
use crate::store::{now_millis, SqlStore};
use crate::values::{bind_values, json_text, read_i64, read_json, read_text, SqlValue};

/// A group to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGroup {
    pub name: String,
    /// Overrides of the fallback configuration, as a JSON object (`Value::Null` or `{}` for
    /// none). Stored as given; validating it is the caller's job.
    pub fallback: serde_json::Value,
}

/// A partial update of a group: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupUpdate {
    pub name: Option<String>,
    pub fallback: Option<serde_json::Value>,
}

/// Persistence of groups.
pub trait GroupStore: Send + Sync {
    /// Creates a group; a name already taken is `Conflict`.
    fn create_group(
        &self,
        new_group: NewGroup,
    ) -> impl Future<Output = Result<Group, StoreError>> + Send;

    fn get_group(
        &self,
        group_id: GroupId,
    ) -> impl Future<Output = Result<Option<Group>, StoreError>> + Send;

    /// Every group, by id.
    fn list_groups(&self) -> impl Future<Output = Result<Vec<Group>, StoreError>> + Send;

    /// Applies `update`; `Ok(None)` when the group does not exist, `Conflict` when the new
    /// name is taken.
    fn update_group(
        &self,
        group_id: GroupId,
        update: GroupUpdate,
    ) -> impl Future<Output = Result<Option<Group>, StoreError>> + Send;

    /// Deletes a group; `Ok(false)` when it did not exist, `Conflict` while accounts or API
    /// keys still belong to it (they would be left pointing nowhere).
    fn delete_group(
        &self,
        group_id: GroupId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

const GROUP_COLUMNS: &str = "id, name, fallback, created_at, updated_at";

fn group_from_row(row: &AnyRow) -> Result<Group, StoreError> {
    Ok(Group {
        id: read_i64(row, "id")?,
        name: read_text(row, "name")?,
        fallback: read_json(row, "fallback")?,
        created_at: read_i64(row, "created_at")?,
        updated_at: read_i64(row, "updated_at")?,
    })
}

fn name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a group named `{name}` already exists")
}

impl GroupStore for SqlStore {
    async fn create_group(&self, new_group: NewGroup) -> Result<Group, StoreError> {
        let now = now_millis();
        let fallback = json_text(&new_group.fallback, "the group's fallback overrides")?;
        let mut transaction = self.begin_write().await?;
        let insert_sql = self.sql(
            "INSERT INTO relay_groups (name, fallback, created_at, updated_at) VALUES (?, ?, ?, ?)",
        );
        let insert = sqlx::query(&insert_sql)
            .bind(new_group.name.as_str())
            .bind(fallback.as_str())
            .bind(now)
            .bind(now);
        let id = self
            .insert_returning_id(&mut transaction, insert)
            .await
            .map_err(|error| match error {
                StoreError::Database(error) => {
                    conflict_on_constraint(error, name_taken(&new_group.name))
                }
                other => other,
            })?;
        transaction.commit().await?;
        Ok(Group {
            id,
            name: new_group.name,
            fallback: new_group.fallback,
            created_at: now,
            updated_at: now,
        })
    }

    async fn get_group(&self, group_id: GroupId) -> Result<Option<Group>, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {GROUP_COLUMNS} FROM relay_groups WHERE id = ?"
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(group_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(group_from_row).transpose()
    }

    async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM relay_groups ORDER BY id");
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter().map(group_from_row).collect()
    }

    async fn update_group(
        &self,
        group_id: GroupId,
        update: GroupUpdate,
    ) -> Result<Option<Group>, StoreError> {
        let mut assignments = Vec::new();
        let mut values = Vec::new();
        if let Some(name) = &update.name {
            assignments.push("name = ?");
            values.push(SqlValue::text(name.clone()));
        }
        if let Some(fallback) = &update.fallback {
            assignments.push("fallback = ?");
            values.push(SqlValue::text(json_text(
                fallback,
                "the group's fallback overrides",
            )?));
        }
        assignments.push("updated_at = ?");
        values.push(SqlValue::big_int(now_millis()));
        values.push(SqlValue::big_int(group_id));

        let sql = self
            .sql(&format!(
                "UPDATE relay_groups SET {} WHERE id = ?",
                assignments.join(", ")
            ))
            .into_owned();
        bind_values(sqlx::query(&sql), &values)
            .execute(self.pool())
            .await
            .map_err(|error| {
                conflict_on_constraint(error, name_taken(update.name.as_deref().unwrap_or("")))
            })?;
        // Read back rather than trust `rows_affected`: MySQL counts only rows whose values
        // changed, so an update to the same values would look like a missing group.
        self.get_group(group_id).await
    }

    async fn delete_group(&self, group_id: GroupId) -> Result<bool, StoreError> {
        let mut transaction = self.begin_write().await?;
        let count_children =
            |table: &str| format!("SELECT COUNT(*) AS children FROM {table} WHERE group_id = ?");
        let mut children = Vec::new();
        for (table, label) in [
            ("relay_accounts", "accounts"),
            ("relay_api_keys", "API keys"),
        ] {
            let row = sqlx::query(&self.sql(&count_children(table)))
                .bind(group_id)
                .fetch_one(&mut *transaction)
                .await?;
            let count = read_i64(&row, "children")?;
            if count > 0 {
                children.push(format!("{count} {label}"));
            }
        }
        if !children.is_empty() {
            return Err(StoreError::Conflict(format!(
                "group {group_id} still has {}; move or delete them first",
                children.join(" and ")
            )));
        }
        let deleted = sqlx::query(&self.sql("DELETE FROM relay_groups WHERE id = ?"))
            .bind(group_id)
            .execute(&mut *transaction)
            .await
            .map_err(|error| {
                conflict_on_constraint(error, || {
                    format!("group {group_id} gained accounts or API keys while being deleted")
                })
            })?;
        transaction.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }
}
