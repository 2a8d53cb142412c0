//! The admin API: resources, secrets staying write-only, fallback routes.

use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn groups_accounts_and_keys_crud() {
    let h = Harness::start().await;
    let group = h
        .post_admin(
            "/groups",
            json!({"name": "team", "strategy": "round_robin"}),
        )
        .await;
    assert_eq!(group["name"], "team");
    assert_eq!(group["strategy"], "round_robin");
    let gid = group["id"].as_i64().unwrap();

    let account = h
        .post_admin(
            "/accounts",
            json!({"name": "acc", "platform": "claude_console", "group_id": gid,
                   "base_url": h.mock.base_url(), "api_key": "sk-secret-value", "weight": 300,
                   "proxy_url": "http://user:hunter2@127.0.0.1:3128"}),
        )
        .await;
    let aid = account["id"].as_i64().unwrap();
    assert_eq!(account["weight"], 300);
    assert_eq!(account["priority"], 100);
    assert_eq!(account["credential_type"], "api_key");
    let key = h
        .post_admin(
            "/api-keys",
            json!({"name": "dev", "group_id": gid, "rpm_limit": 100}),
        )
        .await;
    let kid = key["id"].as_i64().unwrap();
    let plain = key["key"].as_str().unwrap().to_owned();
    assert!(plain.starts_with("sk-relay-"));

    // Secrets never come back: not the upstream key, not the proxy password, not the
    // relay key (after creation) nor its hash.
    for path in [
        "/accounts",
        &format!("/accounts/{aid}"),
        "/api-keys",
        &format!("/api-keys/{kid}"),
    ] {
        let (status, value) = h.admin(Method::GET, path, None).await;
        assert_eq!(status, 200);
        let text = value.to_string();
        assert!(
            !text.contains("sk-secret-value"),
            "{path} leaks the account key"
        );
        assert!(!text.contains("hunter2"), "{path} leaks the proxy password");
        assert!(!text.contains(&plain), "{path} leaks the relay key");
        assert!(
            !text.contains(&relay_proxy::auth::hash_key(&plain)),
            "{path} leaks the key hash"
        );
    }

    let (_, list) = h.admin(Method::GET, "/groups", None).await;
    assert_eq!(list["total"], 1);
    let (status, updated) = h
        .admin(
            Method::PUT,
            &format!("/accounts/{aid}"),
            Some(json!({"priority": 5, "proxy_url": null})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["priority"], 5);
    assert!(updated["proxy_url"].is_null());
    assert_eq!(updated["weight"], 300);
    let (status, updated) = h
        .admin(
            Method::PUT,
            &format!("/api-keys/{kid}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(updated["enabled"], false);
    let (status, updated) = h
        .admin(
            Method::PUT,
            &format!("/groups/{gid}"),
            Some(json!({"strategy": "weighted"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(updated["strategy"], "weighted");

    // A group with members cannot be deleted; once empty it can.
    let (status, _) = h
        .admin(Method::DELETE, &format!("/groups/{gid}"), None)
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        h.admin(Method::DELETE, &format!("/accounts/{aid}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        h.admin(Method::DELETE, &format!("/api-keys/{kid}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        h.admin(Method::DELETE, &format!("/groups/{gid}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        h.admin(Method::GET, &format!("/groups/{gid}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        h.admin(Method::GET, &format!("/accounts/{aid}"), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn account_test_sends_one_minimal_request() {
    let h = Harness::start().await;
    let (_, account, _) = h.simple_setup().await;
    let (status, result) = h
        .admin(Method::POST, &format!("/accounts/{account}/test"), None)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["success"], true);
    assert_eq!(result["status"], 200);
    assert!(result["latency_ms"].is_number());
    let sent = h.mock.requests_for("sk-a")[0].json_body().unwrap();
    assert_eq!(sent["max_tokens"], 1);

    h.mock.push("sk-a", relay_mock::Behavior::Unauthorized);
    let (_, result) = h
        .admin(Method::POST, &format!("/accounts/{account}/test"), None)
        .await;
    assert_eq!(result["success"], false);
    assert_eq!(result["status"], 401);
    assert_eq!(result["class"], "auth");
}

#[tokio::test]
async fn fallback_config_get_put_validates_and_applies() {
    let h = Harness::start().await;
    let (status, config) = h.admin(Method::GET, "/fallback/config", None).await;
    assert_eq!(status, 200);
    assert_eq!(config["max_retries"], 3);
    assert_eq!(config["strategy"], "priority_first");
    assert_eq!(config["failure_window"], "5m");
    assert_eq!(config["recovery_window"], "10m");
    assert_eq!(config["health_check_interval"], "2m");
    assert_eq!(config["circuit_breaker_threshold"], 5);

    let (status, config) = h
        .admin(
            Method::PUT,
            "/fallback/config",
            Some(json!({"max_retries": 1, "strategy": "least_used"})),
        )
        .await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["max_retries"], 1);
    assert_eq!(config["strategy"], "least_used");
    assert_eq!(config["retry_delay"], "0s");

    let (status, error) = h
        .admin(
            Method::PUT,
            "/fallback/config",
            Some(json!({"max_retries": 1, "health_check_interval": "5s"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("health_check_interval"));
    let (_, config) = h.admin(Method::GET, "/fallback/config", None).await;
    assert_eq!(
        config["health_check_interval"], "2m",
        "a refused PUT changed something"
    );

    // Applied to existing groups without restart: max_retries 1 → at most 2 attempts.
    let group = h.group("three", None).await;
    for (i, c) in ["sk-1", "sk-2", "sk-3"].iter().enumerate() {
        h.console_account(group, &format!("a{i}"), c, i as i32)
            .await;
        h.mock.set_default(c, relay_mock::Behavior::Overloaded);
    }
    let key = h.key(group).await;
    let response = h.messages(&key, message_body(false)).await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["fallback_info"]["attempt_count"], 2);
    assert_eq!(body["fallback_info"]["strategy_used"], "least_used");
}

#[tokio::test]
async fn disable_and_enable_account_with_health_view() {
    let h = Harness::start().await;
    let group = h.group("pool", None).await;
    let first = h.console_account(group, "first", "sk-first", 1).await;
    h.console_account(group, "second", "sk-second", 2).await;
    let key = h.key(group).await;

    let (status, answer) = h
        .admin(
            Method::POST,
            "/fallback/disable-account",
            Some(json!({"group_id": group, "account_id": first, "duration": "30m", "reason": "maintenance"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["disabled_until"].as_str().is_some());
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-first"), 0);
    assert_eq!(h.mock.count_for("sk-second"), 1);

    let (_, health) = h
        .admin(
            Method::GET,
            &format!("/fallback/account-health?account_id={first}"),
            None,
        )
        .await;
    assert_eq!(health["account_id"], first);
    assert_eq!(health["status"], "unhealthy");
    assert!(health["disabled_until"].is_string());
    for field in [
        "success_count",
        "failure_count",
        "error_rate",
        "avg_response_time",
        "last_success",
        "last_failure",
        "breaker",
    ] {
        assert!(health.get(field).is_some(), "account-health lacks {field}");
    }

    let (status, _) = h
        .admin(
            Method::POST,
            "/fallback/enable-account",
            Some(json!({"group_id": group, "account_id": first})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert_eq!(h.mock.count_for("sk-first"), 1);

    let (_, all) = h
        .admin(
            Method::GET,
            &format!("/fallback/account-health?group_id={group}"),
            None,
        )
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let (status, _) = h
        .admin(
            Method::POST,
            "/fallback/disable-account",
            Some(json!({"account_id": first, "duration": "soon"})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stats_export_reset_and_prometheus_show_real_figures() {
    let h = Harness::start().await;
    let group = h.group("pool", None).await;
    let first = h.console_account(group, "first", "sk-first", 1).await;
    let second = h.console_account(group, "second", "sk-second", 2).await;
    let key = h.key(group).await;
    h.mock.push(
        "sk-first",
        relay_mock::Behavior::RateLimited {
            retry_after_secs: Some(30),
            reset_in_secs: None,
        },
    );
    assert_eq!(h.messages(&key, message_body(false)).await.status(), 200);
    assert!(!h
        .messages(&key, message_body(true))
        .await
        .text()
        .await
        .unwrap()
        .is_empty());

    let (status, stats) = h
        .admin(
            Method::GET,
            &format!("/fallback/stats?group_id={group}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{stats}");
    let group_stats = &stats["groups"][0];
    assert_eq!(group_stats["requests"], 2);
    assert_eq!(group_stats["successes"], 2);
    assert_eq!(group_stats["fallbacks"], 1);
    assert_eq!(group_stats["fallback_success_rate"], 1.0);
    assert!(group_stats["p99_latency_ms"].is_number());
    let accounts = stats["accounts"].as_array().unwrap();
    let first_stats = accounts.iter().find(|a| a["account_id"] == first).unwrap();
    assert_eq!(first_stats["failures_by_class"]["rate_limited"], 1);
    let second_stats = accounts.iter().find(|a| a["account_id"] == second).unwrap();
    assert_eq!(second_stats["successes"], 2);
    assert_eq!(second_stats["output_tokens"], 14);
    assert!(second_stats["p50_latency_ms"].is_number());

    let response = h
        .client
        .get(h.url("/api/v1/admin/fallback/export-metrics?format=csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("relay-metrics.csv"));
    let csv = response.text().await.unwrap();
    assert!(csv.lines().count() >= 3, "{csv}");
    let (status, _) = h
        .admin(Method::GET, "/fallback/export-metrics?format=xml", None)
        .await;
    assert_eq!(status, 400);

    // Prometheus needs no credentials.
    let text = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("relay_requests_total"), "{text}");
    assert!(text.contains(&format!("account=\"{second}\"")));

    let (status, _) = h.admin(Method::POST, "/fallback/reset-metrics", None).await;
    assert_eq!(status, 200);
    let (_, stats) = h
        .admin(
            Method::GET,
            &format!("/fallback/stats?group_id={group}"),
            None,
        )
        .await;
    assert_eq!(stats["groups"][0]["requests"], 0);
}
