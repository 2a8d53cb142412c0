//! The seed's metrics routes (stats, reset-metrics, export-metrics) and the Prometheus text
//! served at `/metrics`.
//!
//! The figures come from `relay_core::metrics::MetricsRegistry` (bounded, windowed); the live
//! parts — each account's health and breaker phase, each group's breaker — are read from the
//! registry of running accounts at answer time, so an answer never shows a stale state. The
//! two are read one after the other, never under both locks at once, so the attempt loop can
//! take them in any order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use relay_core::duration::format_rfc3339;
use relay_core::metrics::{
    to_csv, to_prometheus, AccountGauge, MetricsFilter, MetricsRegistry, MetricsSnapshot,
};
use relay_core::model::{AccountId, GroupId};
use relay_core::UnixMillis;
use relay_proxy::registry::lock;
use relay_proxy::RelayState;
use serde_json::{json, Value};

use crate::error::AdminError;
use crate::input::query_id;
use crate::AdminState;

/// The content type of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const SCOPE_PARAMETERS: &[&str] = &["group_id", "account_id"];
const EXPORT_PARAMETERS: &[&str] = &["format", "group_id", "account_id"];

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/fallback/stats", get(stats))
        .route("/fallback/reset-metrics", post(reset_metrics))
        .route("/fallback/export-metrics", get(export_metrics))
}

/// A router serving `GET /metrics` in the Prometheus text format, without credentials (as
/// PRODUCT.md §3 asks for scrapers).
pub fn prometheus_router(relay: Arc<RelayState>) -> Router {
    Router::new()
        .route("/metrics", get(prometheus_metrics))
        .with_state(relay)
}

/// Every metric in the Prometheus text format: the windowed figures and monotonic counters
/// of the metrics registry, plus live gauges (health, breaker, in-flight) of every account.
pub fn prometheus_text(state: &RelayState) -> String {
    let now = state.now();
    let live = LiveView::read(state, now);
    let snapshot = {
        let mut metrics = lock(metrics_of(state));
        metrics.prune(now);
        metrics.snapshot(&MetricsFilter::default(), now)
    };
    to_prometheus(&snapshot, &live.gauges())
}

async fn prometheus_metrics(State(relay): State<Arc<RelayState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        prometheus_text(&relay),
    )
        .into_response()
}

async fn stats(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AdminError> {
    let filter = scope_filter(&query, SCOPE_PARAMETERS)?;
    Ok(Json(stats_value(&state.relay, &filter)))
}

async fn reset_metrics(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AdminError> {
    let filter = scope_filter(&query, SCOPE_PARAMETERS)?;
    let now = state.relay.now();
    let outcome = lock(metrics_of(&state.relay)).reset(&filter, now);
    tracing::info!(
        group_id = ?filter.group_id,
        account_id = ?filter.account_id,
        groups_reset = outcome.groups_reset,
        accounts_reset = outcome.accounts_reset,
        "metrics reset through the admin API"
    );
    Ok(Json(json!({
        "reset": true,
        "group_id": filter.group_id,
        "account_id": filter.account_id,
        "groups_reset": outcome.groups_reset,
        "accounts_reset": outcome.accounts_reset,
        "reset_at": format_rfc3339(now),
    })))
}

async fn export_metrics(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let format = ExportFormat::parse(query.get("format").map(String::as_str))?;
    let filter = scope_filter(&query, EXPORT_PARAMETERS)?;
    let body = match format {
        ExportFormat::Json => {
            let value = stats_value(&state.relay, &filter);
            serde_json::to_string_pretty(&value)
                .map_err(|e| AdminError::Internal(format!("metrics export failed: {e}")))?
        }
        ExportFormat::Csv => {
            let now = state.relay.now();
            let live = LiveView::read(&state.relay, now);
            let snapshot =
                complete_snapshot(&mut lock(metrics_of(&state.relay)), &filter, now, &live);
            to_csv(&snapshot)
        }
    };
    Ok(download(format, body))
}

/// The one place that names the relay's metrics registry.
fn metrics_of(relay: &RelayState) -> &std::sync::Mutex<MetricsRegistry> {
    &relay.metrics
}

/// The stats answer: the metrics of the scope plus each account's and group's live state.
fn stats_value(relay: &RelayState, filter: &MetricsFilter) -> Value {
    let now = relay.now();
    let live = LiveView::read(relay, now);
    let snapshot = complete_snapshot(&mut lock(metrics_of(relay)), filter, now, &live);
    stats_json(&snapshot, &live)
}

/// The formats `export-metrics` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportFormat {
    Json,
    Csv,
}

impl ExportFormat {
    /// JSON when the parameter is absent or empty; 400 naming `format` for anything unknown.
    fn parse(raw: Option<&str>) -> Result<ExportFormat, AdminError> {
        match raw.map(str::trim) {
            None | Some("") => Ok(ExportFormat::Json),
            Some(name) if name.eq_ignore_ascii_case("json") => Ok(ExportFormat::Json),
            Some(name) if name.eq_ignore_ascii_case("csv") => Ok(ExportFormat::Csv),
            Some(_) => Err(AdminError::Invalid(
                "format: must be json or csv".to_owned(),
            )),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Json => "application/json",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            ExportFormat::Json => "relay-metrics.json",
            ExportFormat::Csv => "relay-metrics.csv",
        }
    }
}

/// A file download: the format's content type and `content-disposition: attachment`.
fn download(format: ExportFormat, body: String) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", format.file_name());
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// Reads `group_id` and `account_id` like the other admin routes (400 naming the field),
/// refusing parameters outside `allowed` so that a misspelt scope never silently widens to
/// everything.
fn scope_filter(
    query: &HashMap<String, String>,
    allowed: &[&str],
) -> Result<MetricsFilter, AdminError> {
    let mut names: Vec<&String> = query.keys().collect();
    names.sort();
    if let Some(unknown) = names.into_iter().find(|n| !allowed.contains(&n.as_str())) {
        return Err(AdminError::Invalid(format!(
            "{unknown}: unknown query parameter (allowed: {})",
            allowed.join(", ")
        )));
    }
    Ok(MetricsFilter {
        group_id: query_id(query.get("group_id"), "group_id")?,
        account_id: query_id(query.get("account_id"), "account_id")?,
    })
}

/// What the registry of running accounts says right now.
#[derive(Debug, Default)]
struct LiveView {
    accounts: BTreeMap<AccountId, LiveAccount>,
    groups: BTreeMap<GroupId, LiveGroup>,
}

#[derive(Debug, Clone)]
struct LiveAccount {
    name: String,
    group_id: GroupId,
    health: &'static str,
    breaker: &'static str,
    in_flight: u32,
}

#[derive(Debug, Clone)]
struct LiveGroup {
    name: String,
    breaker: &'static str,
}

impl LiveView {
    /// Takes each account's and group's lock briefly, one at a time.
    fn read(relay: &RelayState, now: UnixMillis) -> LiveView {
        let snapshot = relay.registry.load_full();
        let accounts = snapshot
            .accounts
            .iter()
            .map(|(id, runtime)| {
                let account = runtime.account();
                let (health, breaker) = runtime.read_state(|state| {
                    (
                        state.health_status(now).as_str(),
                        state.breaker().phase(now).as_str(),
                    )
                });
                let live = LiveAccount {
                    name: account.name.clone(),
                    group_id: account.group_id,
                    health,
                    breaker,
                    in_flight: runtime.in_flight.load(Ordering::Relaxed),
                };
                (*id, live)
            })
            .collect();
        let groups = snapshot
            .groups
            .iter()
            .map(|(id, runtime)| {
                let live = LiveGroup {
                    name: runtime.group.name.clone(),
                    breaker: lock(&runtime.breaker).phase(now).as_str(),
                };
                (*id, live)
            })
            .collect();
        LiveView { accounts, groups }
    }

    fn gauges(&self) -> Vec<AccountGauge> {
        self.accounts
            .iter()
            .map(|(id, live)| AccountGauge {
                account_id: *id,
                group_id: live.group_id,
                account_name: live.name.clone(),
                health: live.health,
                breaker: live.breaker,
                in_flight: live.in_flight,
            })
            .collect()
    }
}

/// The snapshot of the filter's scope, pruned first, with a zero row for every running account
/// and group in scope that has no figures yet, so operators see the whole pool.
fn complete_snapshot(
    metrics: &mut MetricsRegistry,
    filter: &MetricsFilter,
    now: UnixMillis,
    live: &LiveView,
) -> MetricsSnapshot {
    metrics.prune(now);
    let mut snapshot = metrics.snapshot(filter, now);
    let in_group = |group_id: GroupId| filter.group_id.is_none_or(|g| g == group_id);

    let listed: BTreeSet<AccountId> = snapshot.accounts.iter().map(|a| a.account_id).collect();
    for (account_id, account) in &live.accounts {
        let wanted = filter.account_id.is_none_or(|a| a == *account_id)
            && in_group(account.group_id)
            && !listed.contains(account_id);
        if !wanted {
            continue;
        }
        let only_this_account = MetricsFilter {
            group_id: None,
            account_id: Some(*account_id),
        };
        for mut stats in metrics.snapshot(&only_this_account, now).accounts {
            stats.group_id.get_or_insert(account.group_id);
            snapshot.accounts.push(stats);
        }
    }
    snapshot.accounts.sort_by_key(|a| a.account_id);

    let groups_listed = filter.group_id.is_some() || filter.account_id.is_none();
    if groups_listed {
        let listed: BTreeSet<GroupId> = snapshot.groups.iter().map(|g| g.group_id).collect();
        for group_id in live.groups.keys() {
            if in_group(*group_id) && !listed.contains(group_id) {
                let only_this_group = MetricsFilter {
                    group_id: Some(*group_id),
                    account_id: None,
                };
                snapshot
                    .groups
                    .extend(metrics.snapshot(&only_this_group, now).groups);
            }
        }
        snapshot.groups.sort_by_key(|g| g.group_id);
    }
    snapshot
}

/// The snapshot as JSON, with each account's name, group, `health`, `breaker` and
/// `in_flight`, and each group's name and live `breaker_state`, read from `live`. Accounts or
/// groups deleted since their figures were recorded keep their figures with nulls.
fn stats_json(snapshot: &MetricsSnapshot, live: &LiveView) -> Value {
    let mut value = serde_json::to_value(snapshot).unwrap_or_else(|_| json!({}));
    if let Some(accounts) = value.get_mut("accounts").and_then(Value::as_array_mut) {
        for account in accounts.iter_mut() {
            let Some(object) = account.as_object_mut() else {
                continue;
            };
            let current = object
                .get("account_id")
                .and_then(Value::as_i64)
                .and_then(|id| live.accounts.get(&id));
            match current {
                Some(current) => {
                    if object.get("group_id").is_none_or(Value::is_null) {
                        object.insert("group_id".to_owned(), json!(current.group_id));
                    }
                    object.insert("account_name".to_owned(), json!(current.name));
                    object.insert("health".to_owned(), json!(current.health));
                    object.insert("breaker".to_owned(), json!(current.breaker));
                    object.insert("in_flight".to_owned(), json!(current.in_flight));
                }
                None => {
                    for field in ["account_name", "health", "breaker", "in_flight"] {
                        object.insert(field.to_owned(), Value::Null);
                    }
                }
            }
        }
    }
    if let Some(groups) = value.get_mut("groups").and_then(Value::as_array_mut) {
        for group in groups.iter_mut() {
            let Some(object) = group.as_object_mut() else {
                continue;
            };
            let current = object
                .get("group_id")
                .and_then(Value::as_i64)
                .and_then(|id| live.groups.get(&id));
            object.insert(
                "group_name".to_owned(),
                current.map_or(Value::Null, |g| json!(g.name)),
            );
            if let Some(current) = current {
                object.insert("breaker_state".to_owned(), json!(current.breaker));
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use relay_core::classify::OutcomeClass;
    use relay_core::metrics::{AttemptSample, RequestSample, DEFAULT_RETENTION_MS};
    use relay_core::model::Usage;

    use super::*;

    const NOW: UnixMillis = 1_700_000_000_000;

    fn live() -> LiveView {
        let mut view = LiveView::default();
        for (id, group_id, name) in [(1, 10, "primary"), (2, 10, "backup"), (3, 20, "other")] {
            view.accounts.insert(
                id,
                LiveAccount {
                    name: name.to_owned(),
                    group_id,
                    health: "healthy",
                    breaker: if id == 2 { "open" } else { "closed" },
                    in_flight: 0,
                },
            );
        }
        for (id, name) in [(10, "main"), (20, "spare")] {
            view.groups.insert(
                id,
                LiveGroup {
                    name: name.to_owned(),
                    breaker: "closed",
                },
            );
        }
        view
    }

    fn metrics_with_data() -> MetricsRegistry {
        let mut metrics = MetricsRegistry::new(DEFAULT_RETENTION_MS).with_start(NOW - 1_000);
        for (account_id, class) in [
            (1, OutcomeClass::RateLimited),
            (2, OutcomeClass::Success),
            (99, OutcomeClass::Success),
        ] {
            metrics.record_attempt(&AttemptSample {
                group_id: 10,
                account_id,
                class,
                status: None,
                latency_ms: 100.0,
                ttfb_ms: Some(20.0),
                usage: Usage::default(),
                cost_usd: 0.0,
                at: NOW,
            });
        }
        metrics.record_request(&RequestSample {
            group_id: 10,
            attempts: 2,
            succeeded: true,
            latency_ms: 250.0,
            at: NOW,
        });
        metrics
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn message(error: AdminError) -> String {
        error.to_string()
    }

    #[test]
    fn scope_parameters_are_validated_and_unknown_ones_refused() {
        let filter = scope_filter(&query(&[("group_id", "10")]), SCOPE_PARAMETERS);
        assert!(matches!(
            filter,
            Ok(MetricsFilter {
                group_id: Some(10),
                account_id: None
            })
        ));
        let bad = scope_filter(&query(&[("account_id", "x")]), SCOPE_PARAMETERS);
        assert!(bad.is_err_and(|e| message(e).starts_with("account_id:")));
        let unknown = scope_filter(&query(&[("groupid", "1")]), SCOPE_PARAMETERS);
        assert!(unknown.is_err_and(|e| message(e).starts_with("groupid:")));
        let format_on_stats = scope_filter(&query(&[("format", "csv")]), SCOPE_PARAMETERS);
        assert!(format_on_stats.is_err());
        assert!(scope_filter(&query(&[("format", "csv")]), EXPORT_PARAMETERS).is_ok());
    }

    #[test]
    fn export_format_defaults_to_json_and_names_the_field_when_wrong() {
        assert_eq!(ExportFormat::parse(None).ok(), Some(ExportFormat::Json));
        assert_eq!(
            ExportFormat::parse(Some("CSV")).ok(),
            Some(ExportFormat::Csv)
        );
        let error = ExportFormat::parse(Some("xml"));
        assert!(error.is_err_and(|e| message(e).starts_with("format:")));
    }

    #[test]
    fn a_download_is_an_attachment_with_the_right_type() {
        let response = download(ExportFormat::Csv, "scope\r\n".to_owned());
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers.get(header::CONTENT_DISPOSITION),
            Some(&HeaderValue::from_static(
                "attachment; filename=\"relay-metrics.csv\""
            ))
        );
        assert_eq!(
            headers.get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("text/csv; charset=utf-8"))
        );
        let json = download(ExportFormat::Json, "{}".to_owned());
        assert_eq!(
            json.headers().get(header::CONTENT_DISPOSITION),
            Some(&HeaderValue::from_static(
                "attachment; filename=\"relay-metrics.json\""
            ))
        );
    }

    #[test]
    fn stats_list_every_running_account_and_group_with_their_live_state() {
        let mut metrics = metrics_with_data();
        let live = live();
        let snapshot = complete_snapshot(&mut metrics, &MetricsFilter::default(), NOW, &live);
        let ids: Vec<_> = snapshot.accounts.iter().map(|a| a.account_id).collect();
        assert_eq!(
            ids,
            vec![1, 2, 3, 99],
            "idle account 3 listed, deleted 99 kept"
        );
        let groups: Vec<_> = snapshot.groups.iter().map(|g| g.group_id).collect();
        assert_eq!(groups, vec![10, 20]);

        let value = stats_json(&snapshot, &live);
        let accounts = &value["accounts"];
        assert_eq!(accounts[0]["failures_by_class"]["rate_limited"], 1);
        assert_eq!(accounts[0]["account_name"], "primary");
        assert_eq!(accounts[1]["breaker"], "open");
        assert_eq!(accounts[1]["health"], "healthy");
        assert_eq!(accounts[2]["requests"], 0);
        assert_eq!(accounts[2]["group_id"], 20);
        assert_eq!(accounts[3]["account_name"], Value::Null);
        assert_eq!(value["groups"][0]["fallback_success_rate"], 1.0);
        assert_eq!(value["groups"][0]["breaker_state"], "closed");
        assert_eq!(value["groups"][0]["group_name"], "main");
        assert_eq!(value["groups"][1]["requests"], 0);
    }

    #[test]
    fn stats_respect_the_scope() {
        let mut metrics = metrics_with_data();
        let live = live();
        let group_twenty = MetricsFilter {
            group_id: Some(20),
            account_id: None,
        };
        let snapshot = complete_snapshot(&mut metrics, &group_twenty, NOW, &live);
        let ids: Vec<_> = snapshot.accounts.iter().map(|a| a.account_id).collect();
        assert_eq!(ids, vec![3]);
        assert_eq!(snapshot.groups.len(), 1);
        assert_eq!(snapshot.groups[0].group_id, 20);

        let one_account = MetricsFilter {
            group_id: None,
            account_id: Some(2),
        };
        let snapshot = complete_snapshot(&mut metrics, &one_account, NOW, &live);
        let ids: Vec<_> = snapshot.accounts.iter().map(|a| a.account_id).collect();
        assert_eq!(ids, vec![2]);
        assert!(snapshot.groups.is_empty());
    }

    #[test]
    fn the_csv_export_carries_the_zero_rows_too() {
        let mut metrics = metrics_with_data();
        let snapshot = complete_snapshot(&mut metrics, &MetricsFilter::default(), NOW, &live());
        let csv = to_csv(&snapshot);
        let account_rows = csv.lines().filter(|l| l.starts_with("account,")).count();
        let group_rows = csv.lines().filter(|l| l.starts_with("group,")).count();
        assert_eq!((account_rows, group_rows), (4, 2));
    }

    #[test]
    fn gauges_come_from_the_live_view() {
        let gauges = live().gauges();
        assert_eq!(gauges.len(), 3);
        assert_eq!(gauges[1].breaker, "open");
        let text = to_prometheus(
            &metrics_with_data().snapshot(&MetricsFilter::default(), NOW),
            &gauges,
        );
        assert!(text.contains("relay_breaker_open{account=\"2\"} 1\n"));
        assert!(text.contains("relay_fallbacks_total{group=\"10\"} 1\n"));
    }
}
