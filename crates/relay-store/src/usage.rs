//! Usage: one row per attempt, and the per-account and per-key counters kept beside them.
//!
//! `record_usage` writes a batch of rows and bumps the counters in one transaction, with
//! `UPDATE ... SET column = column + ?` so that the database does the addition: concurrent
//! writers (several flush tasks, several relay instances) never read-modify-write and never
//! lose an increment. Counters, like `usage_totals`, count successful attempts only: a failed
//! attempt is already visible in the rows and the fallback statistics.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use relay_core::classify::OutcomeClass;
use relay_core::model::{AccountId, ApiKeyId, GroupId};
use relay_core::UnixMillis;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::Arguments as _;

use crate::error::StoreError;
use crate::store::SqlStore;
use crate::values::{
    big_int_from_u64, bind_values, read_bool, read_f64, read_i64, read_optional_i64,
    read_optional_u16, read_optional_u64, read_text, read_u32, read_u64, SqlValue,
};

/// One attempt of one client request, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Shared with the request that made it: recording a row copies no text.
    pub request_id: Arc<str>,
    /// 1 for the first attempt of a request, 2 for its first fallback, and so on.
    pub attempt: u32,
    pub api_key_id: Option<ApiKeyId>,
    pub group_id: Option<GroupId>,
    pub account_id: Option<AccountId>,
    pub model: String,
    pub stream: bool,
    /// The upstream's HTTP status, when one was received.
    pub status: Option<u16>,
    /// The outcome class, as `OutcomeClass::as_str` spells it (`"success"`, ...): borrowed
    /// when recorded, owned when read back.
    pub class: Cow<'static, str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
    /// Time to the first byte of the upstream's answer.
    pub ttfb_ms: Option<u64>,
    /// Raw unix milliseconds; the admin API renders it as RFC 3339.
    pub created_at: UnixMillis,
}

/// Which rows `list_usage` and `usage_totals` look at. Every `Some` narrows the selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub api_key_id: Option<ApiKeyId>,
    pub group_id: Option<GroupId>,
    pub account_id: Option<AccountId>,
    /// Rows created at or after this instant.
    pub since: Option<UnixMillis>,
    /// Page size of `list_usage` (0 answers no rows, only the total); ignored by totals.
    pub limit: u32,
    /// Rows skipped before the page; ignored by totals.
    pub offset: u32,
}

/// Sums over successful attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cost_usd: f64,
}

/// The lifetime counters of an account or API key, over successful attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageCounters {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// The `created_at` of the newest successful attempt.
    pub last_used_at: Option<UnixMillis>,
}

/// Persistence of usage.
pub trait UsageStore: Send + Sync {
    /// One transaction: inserts the rows and increments the per-account and per-key counters
    /// with `UPDATE ... SET x = x + ?`, atomic in the database, so concurrent writers never
    /// lose an update. Counters count successful attempts only. Rows naming an account or key
    /// that no longer exists are kept; there is simply no counter to bump.
    fn record_usage(
        &self,
        rows: &[UsageRow],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One page of rows, newest first (`created_at` descending, then insertion order
    /// descending), and the number of rows matching the filter regardless of the page.
    fn list_usage(
        &self,
        filter: &UsageFilter,
    ) -> impl Future<Output = Result<(Vec<UsageRow>, u64), StoreError>> + Send;

    /// Totals over the successful attempts matching the filter.
    fn usage_totals(
        &self,
        filter: &UsageFilter,
    ) -> impl Future<Output = Result<UsageTotals, StoreError>> + Send;

    /// What a key has spent since `since`, over every attempt (a stream that failed half-way
    /// was still billed): seeds the daily cost limit when the relay starts.
    fn api_key_cost_since(
        &self,
        api_key_id: ApiKeyId,
        since: UnixMillis,
    ) -> impl Future<Output = Result<f64, StoreError>> + Send;

    /// The key's lifetime counters; `NotFound` when it does not exist.
    fn api_key_usage_counters(
        &self,
        api_key_id: ApiKeyId,
    ) -> impl Future<Output = Result<UsageCounters, StoreError>> + Send;
}

/// The counter columns shared by `relay_accounts` and `relay_api_keys`.
pub(crate) const COUNTER_COLUMNS: &str =
    "usage_requests, usage_input_tokens, usage_output_tokens, usage_cost_usd, last_used_at";

pub(crate) fn counters_from_row(row: &AnyRow) -> Result<UsageCounters, StoreError> {
    Ok(UsageCounters {
        requests: read_u64(row, "usage_requests")?,
        input_tokens: read_u64(row, "usage_input_tokens")?,
        output_tokens: read_u64(row, "usage_output_tokens")?,
        cost_usd: read_f64(row, "usage_cost_usd")?,
        last_used_at: read_optional_i64(row, "last_used_at")?,
    })
}

const USAGE_COLUMNS: [&str; 17] = [
    "request_id",
    "attempt",
    "api_key_id",
    "group_id",
    "account_id",
    "model",
    "is_stream",
    "http_status",
    "outcome_class",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cost_usd",
    "duration_ms",
    "ttfb_ms",
    "created_at",
];

/// How a batch of `total` rows is cut into INSERT statements: full statements of
/// `per_statement` rows (`Dialect::insert_rows_per_statement`), then the rest in powers of
/// two. Every size is one prepared statement that the driver caches per connection; with the
/// rest in one piece a long-running relay ended up caching a large statement for every size
/// below a full one (tens of MB with 100 rows), with powers of two there are at most eight.
fn insert_chunk_sizes(total: usize, per_statement: usize) -> impl Iterator<Item = usize> {
    let full = total / per_statement;
    let rest = total % per_statement;
    std::iter::repeat_n(per_statement, full).chain(
        (0..usize::BITS)
            .rev()
            .map(|bit| 1usize << bit)
            .filter(move |size| rest & size != 0),
    )
}

/// Adds one row's values in `USAGE_COLUMNS` order, as `bind_values` binds them (the same
/// types, `NULL` for what is absent) but borrowing the row's text instead of copying it.
fn add_usage_row<'q>(
    arguments: &mut AnyArguments<'q>,
    row: &'q UsageRow,
) -> Result<(), sqlx::error::BoxDynError> {
    arguments.add(&*row.request_id)?;
    arguments.add(i64::from(row.attempt))?;
    arguments.add(row.api_key_id)?;
    arguments.add(row.group_id)?;
    arguments.add(row.account_id)?;
    arguments.add(row.model.as_str())?;
    arguments.add(i32::from(row.stream))?;
    arguments.add(row.status.map(i32::from))?;
    arguments.add(&*row.class)?;
    arguments.add(big_int_from_u64(row.input_tokens))?;
    arguments.add(big_int_from_u64(row.output_tokens))?;
    arguments.add(big_int_from_u64(row.cache_read_input_tokens))?;
    arguments.add(big_int_from_u64(row.cache_creation_input_tokens))?;
    arguments.add(row.cost_usd)?;
    arguments.add(big_int_from_u64(row.duration_ms))?;
    arguments.add(row.ttfb_ms.map(big_int_from_u64))?;
    arguments.add(row.created_at)
}

/// Whether binding `row` binds a `NULL` (see `Dialect::caches_statements_with_nulls`).
fn has_null(row: &UsageRow) -> bool {
    row.api_key_id.is_none()
        || row.group_id.is_none()
        || row.account_id.is_none()
        || row.status.is_none()
        || row.ttfb_ms.is_none()
}

fn usage_row_from_row(row: &AnyRow) -> Result<UsageRow, StoreError> {
    Ok(UsageRow {
        request_id: read_text(row, "request_id")?.into(),
        attempt: read_u32(row, "attempt")?,
        api_key_id: read_optional_i64(row, "api_key_id")?,
        group_id: read_optional_i64(row, "group_id")?,
        account_id: read_optional_i64(row, "account_id")?,
        model: read_text(row, "model")?,
        stream: read_bool(row, "is_stream")?,
        status: read_optional_u16(row, "http_status")?,
        class: Cow::Owned(read_text(row, "outcome_class")?),
        input_tokens: read_u64(row, "input_tokens")?,
        output_tokens: read_u64(row, "output_tokens")?,
        cache_read_input_tokens: read_u64(row, "cache_read_input_tokens")?,
        cache_creation_input_tokens: read_u64(row, "cache_creation_input_tokens")?,
        cost_usd: read_f64(row, "cost_usd")?,
        duration_ms: read_u64(row, "duration_ms")?,
        ttfb_ms: read_optional_u64(row, "ttfb_ms")?,
        created_at: read_i64(row, "created_at")?,
    })
}

fn is_success(row: &UsageRow) -> bool {
    row.class == OutcomeClass::Success.as_str()
}

/// What one batch adds to one account's or key's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CounterIncrement {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    last_used_at: UnixMillis,
}

impl CounterIncrement {
    fn add(&mut self, row: &UsageRow) {
        self.requests = self.requests.saturating_add(1);
        self.input_tokens = self
            .input_tokens
            .saturating_add(big_int_from_u64(row.input_tokens));
        self.output_tokens = self
            .output_tokens
            .saturating_add(big_int_from_u64(row.output_tokens));
        self.cost_usd += row.cost_usd;
        self.last_used_at = self.last_used_at.max(row.created_at);
    }
}

/// Sums the successful rows of a batch per account and per key. The maps are ordered, so
/// every writer updates counters in ascending id order: two batches touching the same rows
/// lock them in the same order and cannot deadlock on a server database.
fn increments_of(
    rows: &[UsageRow],
) -> (
    BTreeMap<AccountId, CounterIncrement>,
    BTreeMap<ApiKeyId, CounterIncrement>,
) {
    let mut per_account: BTreeMap<AccountId, CounterIncrement> = BTreeMap::new();
    let mut per_api_key: BTreeMap<ApiKeyId, CounterIncrement> = BTreeMap::new();
    for row in rows.iter().filter(|row| is_success(row)) {
        if let Some(account_id) = row.account_id {
            per_account.entry(account_id).or_default().add(row);
        }
        if let Some(api_key_id) = row.api_key_id {
            per_api_key.entry(api_key_id).or_default().add(row);
        }
    }
    (per_account, per_api_key)
}

/// `WHERE` conditions and their values for a filter; `only_successes` adds the class test.
fn filter_conditions(filter: &UsageFilter, only_successes: bool) -> (String, Vec<SqlValue>) {
    let mut conditions: Vec<&str> = Vec::new();
    let mut values = Vec::new();
    if let Some(api_key_id) = filter.api_key_id {
        conditions.push("api_key_id = ?");
        values.push(SqlValue::big_int(api_key_id));
    }
    if let Some(group_id) = filter.group_id {
        conditions.push("group_id = ?");
        values.push(SqlValue::big_int(group_id));
    }
    if let Some(account_id) = filter.account_id {
        conditions.push("account_id = ?");
        values.push(SqlValue::big_int(account_id));
    }
    if let Some(since) = filter.since {
        conditions.push("created_at >= ?");
        values.push(SqlValue::big_int(since));
    }
    if only_successes {
        conditions.push("outcome_class = ?");
        values.push(SqlValue::text(OutcomeClass::Success.as_str()));
    }
    if conditions.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), values)
    }
}

impl UsageStore for SqlStore {
    async fn record_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        // Multi-row INSERTs: one statement (one round trip to the driver) per chunk of rows
        // instead of one per row; the dialect says how many rows a chunk holds.
        let one_row = format!("({})", vec!["?"; USAGE_COLUMNS.len()].join(", "));
        let insert_sql_for = |count: usize| {
            self.sql(&format!(
                "{} INTO relay_usage ({}) VALUES {}",
                self.dialect().batch_insert_verb(),
                USAGE_COLUMNS.join(", "),
                vec![one_row.as_str(); count].join(", ")
            ))
            .into_owned()
        };
        let counter_update_sql = |table: &str| {
            self.sql(&format!(
                "UPDATE {table} SET usage_requests = usage_requests + ?, \
                 usage_input_tokens = usage_input_tokens + ?, \
                 usage_output_tokens = usage_output_tokens + ?, \
                 usage_cost_usd = usage_cost_usd + ?, \
                 last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? \
                 THEN ? ELSE last_used_at END \
                 WHERE id = ?"
            ))
            .into_owned()
        };
        let (per_account, per_api_key) = increments_of(rows);

        let mut transaction = self.begin_write().await?;
        let mut rest = rows;
        let per_statement = self.dialect().insert_rows_per_statement();
        // Most chunks are full: their statement's text is built once per batch.
        let full_sql = insert_sql_for(per_statement);
        for size in insert_chunk_sizes(rows.len(), per_statement) {
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let partial_sql;
            let insert_sql = if size == per_statement {
                &full_sql
            } else {
                partial_sql = insert_sql_for(size);
                &partial_sql
            };
            // Sized up front: bound one by one, the values' list grows (and is copied) a dozen
            // times on the way to a hundred rows.
            let mut arguments = AnyArguments::default();
            arguments.reserve(chunk.len() * USAGE_COLUMNS.len(), 0);
            for row in chunk {
                add_usage_row(&mut arguments, row).map_err(sqlx::Error::Encode)?;
            }
            let mut query = sqlx::query_with(insert_sql, arguments);
            if !self.dialect().caches_statements_with_nulls() && chunk.iter().any(has_null) {
                query = query.persistent(false);
            }
            query.execute(&mut *transaction).await?;
        }
        for (table, increments) in [
            ("relay_accounts", &per_account),
            ("relay_api_keys", &per_api_key),
        ] {
            let update_sql = counter_update_sql(table);
            for (id, increment) in increments {
                sqlx::query(&update_sql)
                    .bind(increment.requests)
                    .bind(increment.input_tokens)
                    .bind(increment.output_tokens)
                    .bind(increment.cost_usd)
                    .bind(increment.last_used_at)
                    .bind(increment.last_used_at)
                    .bind(*id)
                    .execute(&mut *transaction)
                    .await?;
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn list_usage(&self, filter: &UsageFilter) -> Result<(Vec<UsageRow>, u64), StoreError> {
        let (conditions, values) = filter_conditions(filter, false);
        let count_sql = self
            .sql(&format!(
                "SELECT COUNT(*) AS matching FROM relay_usage{conditions}"
            ))
            .into_owned();
        let count_row = bind_values(sqlx::query(&count_sql), &values)
            .fetch_one(self.pool())
            .await?;
        let total = read_u64(&count_row, "matching")?;
        if filter.limit == 0 {
            return Ok((Vec::new(), total));
        }

        let page_sql = self
            .sql(&format!(
                "SELECT {} FROM relay_usage{conditions} \
                 ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                USAGE_COLUMNS.join(", ")
            ))
            .into_owned();
        let mut page_values = values;
        page_values.push(SqlValue::big_int(i64::from(filter.limit)));
        page_values.push(SqlValue::big_int(i64::from(filter.offset)));
        let rows = bind_values(sqlx::query(&page_sql), &page_values)
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(usage_row_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, total))
    }

    async fn usage_totals(&self, filter: &UsageFilter) -> Result<UsageTotals, StoreError> {
        let (conditions, values) = filter_conditions(filter, true);
        let dialect = self.dialect();
        let sql = self
            .sql(&format!(
                "SELECT COUNT(*) AS requests, {} AS input_tokens, {} AS output_tokens, \
                 {} AS cache_read_input_tokens, {} AS cache_creation_input_tokens, \
                 {} AS cost_usd FROM relay_usage{conditions}",
                dialect.sum_integer("input_tokens"),
                dialect.sum_integer("output_tokens"),
                dialect.sum_integer("cache_read_input_tokens"),
                dialect.sum_integer("cache_creation_input_tokens"),
                dialect.sum_double("cost_usd"),
            ))
            .into_owned();
        let row = bind_values(sqlx::query(&sql), &values)
            .fetch_one(self.pool())
            .await?;
        Ok(UsageTotals {
            requests: read_u64(&row, "requests")?,
            input_tokens: read_u64(&row, "input_tokens")?,
            output_tokens: read_u64(&row, "output_tokens")?,
            cache_read_input_tokens: read_u64(&row, "cache_read_input_tokens")?,
            cache_creation_input_tokens: read_u64(&row, "cache_creation_input_tokens")?,
            cost_usd: read_f64(&row, "cost_usd")?,
        })
    }

    async fn api_key_cost_since(
        &self,
        api_key_id: ApiKeyId,
        since: UnixMillis,
    ) -> Result<f64, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {} AS cost_usd FROM relay_usage WHERE api_key_id = ? AND created_at >= ?",
                self.dialect().sum_double("cost_usd")
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(api_key_id)
            .bind(since)
            .fetch_one(self.pool())
            .await?;
        read_f64(&row, "cost_usd")
    }

    async fn api_key_usage_counters(
        &self,
        api_key_id: ApiKeyId,
    ) -> Result<UsageCounters, StoreError> {
        let sql = self
            .sql(&format!(
                "SELECT {COUNTER_COLUMNS} FROM relay_api_keys WHERE id = ?"
            ))
            .into_owned();
        let row = sqlx::query(&sql)
            .bind(api_key_id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        counters_from_row(&row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(class: &str, account_id: Option<AccountId>, created_at: UnixMillis) -> UsageRow {
        UsageRow {
            request_id: "r".into(),
            attempt: 1,
            api_key_id: Some(7),
            group_id: Some(1),
            account_id,
            model: "claude-sonnet-4".into(),
            stream: false,
            status: Some(200),
            class: class.to_owned().into(),
            input_tokens: 10,
            output_tokens: 5,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
            cost_usd: 0.5,
            duration_ms: 100,
            ttfb_ms: None,
            created_at,
        }
    }

    #[test]
    fn increments_sum_successes_per_account_and_key_and_keep_the_newest_time() {
        let rows = [
            row("success", Some(1), 100),
            row("success", Some(1), 300),
            row("rate_limited", Some(1), 400),
            row("success", Some(2), 200),
            row("success", None, 500),
        ];
        let (per_account, per_api_key) = increments_of(&rows);
        assert_eq!(per_account.len(), 2);
        assert_eq!(
            per_account.get(&1).copied(),
            Some(CounterIncrement {
                requests: 2,
                input_tokens: 20,
                output_tokens: 10,
                cost_usd: 1.0,
                last_used_at: 300,
            })
        );
        assert_eq!(
            per_account.get(&2).map(|increment| increment.requests),
            Some(1)
        );
        let key = per_api_key.get(&7).copied().unwrap_or_default();
        assert_eq!(key.requests, 4);
        assert_eq!(key.last_used_at, 500);
    }

    #[test]
    fn batches_are_cut_into_a_few_statement_sizes() {
        for (per_statement, expected) in [
            (100, vec![1, 2, 4, 8, 16, 32, 64, 100]),
            (16, vec![1, 2, 4, 8, 16]),
        ] {
            let mut sizes_seen = std::collections::BTreeSet::new();
            for total in 0..=1_000 {
                let sizes: Vec<usize> = insert_chunk_sizes(total, per_statement).collect();
                assert_eq!(sizes.iter().sum::<usize>(), total, "{total}: {sizes:?}");
                assert!(sizes.iter().all(|size| *size <= per_statement));
                sizes_seen.extend(sizes);
            }
            assert_eq!(sizes_seen.into_iter().collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn filters_become_anded_conditions_in_a_fixed_order() {
        let filter = UsageFilter {
            api_key_id: Some(3),
            account_id: Some(9),
            since: Some(1000),
            ..UsageFilter::default()
        };
        let (conditions, values) = filter_conditions(&filter, true);
        assert_eq!(
            conditions,
            " WHERE api_key_id = ? AND account_id = ? AND created_at >= ? AND outcome_class = ?"
        );
        assert_eq!(values.len(), 4);
        assert_eq!(filter_conditions(&UsageFilter::default(), false).0, "");
    }
}
