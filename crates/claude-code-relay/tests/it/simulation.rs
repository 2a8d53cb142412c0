//! A simulation in virtual time (issue: the fallback engine's promises, measured).
//!
//! Five accounts behind one group serve 10,000 requests over real loopback HTTP while the
//! relay's clock is virtual (100 ms per request, ~17 minutes in all):
//! - `rl1`, `rl2` rate-limit every few minutes with `retry-after` and
//!   `anthropic-ratelimit-requests-reset` headers (60 s);
//! - `down` fails with 500 for the first 5 minutes, then recovers;
//! - `flaky` fails 30% of its attempts at random;
//! - `healthy` always answers.
//!
//! Recovery probes run every `health_check_interval` of virtual time, as the probe loop would.
//! The test reports and asserts: client success rate, attempts on accounts that were known to
//! be unusable when the request was planned, and how long the recovered account waited for
//! traffic.

use std::collections::HashMap;
use std::sync::Arc;

use claude_code_relay::app::start_with_clock;
use claude_code_relay::config::{Overrides, ServerConfig};
use rand::{Rng, SeedableRng};
use relay_core::model::ModelFamily;
use relay_core::state::Eligibility;
use relay_mock::{Behavior, MockConfig, MockUpstream};
use relay_proxy::clock::ManualClock;
use relay_store::{UsageFilter, UsageStore};

use crate::support::*;

const REQUESTS: usize = 10_000;
const STEP_MS: i64 = 100;
const PROBE_INTERVAL_MS: i64 = 120_000;
const DOWN_FOR_MS: i64 = 5 * 60_000;
const RATE_LIMIT_EVERY_MS: i64 = 3 * 60_000;

fn rate_limited(now: i64) -> Behavior {
    Behavior::Status {
        status: 429,
        headers: vec![
            ("retry-after".to_owned(), "60".to_owned()),
            (
                "anthropic-ratelimit-requests-remaining".to_owned(),
                "0".to_owned(),
            ),
            (
                "anthropic-ratelimit-requests-reset".to_owned(),
                relay_core::duration::format_rfc3339(now + 60_000),
            ),
        ],
        body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"rate limited"}}"#
            .to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_accounts_ten_thousand_requests_in_virtual_time() {
    let mock = MockUpstream::start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = temp_dir();
    let mut env = base_env(&dir, &mock);
    env.insert("FALLBACK_MAX_RETRIES".to_owned(), "4".to_owned());
    env.insert("FALLBACK_STRATEGY".to_owned(), "round_robin".to_owned());
    let start = 1_800_000_000_000i64;
    let clock = Arc::new(ManualClock::new(start));
    let config = ServerConfig::load(&env, &Overrides::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = start_with_clock(config, Some(listener), clock.clone())
        .await
        .unwrap();
    let h = Harness {
        relay: None,
        mock,
        client: reqwest::Client::new(),
        base: relay.base_url(),
        env,
    };
    let group = h.group("sim", None).await;
    let names = ["rl1", "rl2", "down", "flaky", "healthy"];
    let mut ids = HashMap::new();
    for name in names {
        let credential = format!("sk-{name}");
        ids.insert(name, h.console_account(group, name, &credential, 1).await);
    }
    let key = h.key(group).await;
    h.mock.set_default("sk-down", Behavior::ServerError(500));

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut successes = 0usize;
    let mut wasted: HashMap<&str, usize> = HashMap::new();
    let mut last_probe = start;
    let mut next_rate_limit = [start, start + RATE_LIMIT_EVERY_MS / 2];
    let recover_at = start + DOWN_FOR_MS;
    let mut recovered = false;
    let mut first_traffic_after_recovery: Option<i64> = None;
    let mut probes_sent = 0usize;
    let mut probes_on_down = 0usize;
    let mut down_attempts_while_down = 0usize;

    for _ in 0..REQUESTS {
        let now = clock.advance(STEP_MS);
        if !recovered && now >= recover_at {
            h.mock.set_default("sk-down", Behavior::Ok);
            recovered = true;
            down_attempts_while_down = h.mock.count_for("sk-down") - probes_on_down;
        }
        for (i, name) in ["sk-rl1", "sk-rl2"].iter().enumerate() {
            if now >= next_rate_limit[i] {
                h.mock.push(name, rate_limited(now));
                next_rate_limit[i] += RATE_LIMIT_EVERY_MS;
            }
        }
        let flaky = if rng.gen_bool(0.3) {
            Behavior::ServerError(500)
        } else {
            Behavior::Ok
        };
        h.mock.set_default("sk-flaky", flaky);
        if now - last_probe >= PROBE_INTERVAL_MS {
            last_probe = now;
            let results = relay_proxy::probe::probe_round(&relay.state).await;
            probes_sent += results.len();
            probes_on_down += results
                .iter()
                .filter(|r| r.account_id == ids["down"])
                .count();
            if recovered
                && first_traffic_after_recovery.is_none()
                && results
                    .iter()
                    .any(|r| r.account_id == ids["down"] && r.success)
            {
                first_traffic_after_recovery = Some(now);
            }
        }

        // What each account looked like when this request was planned.
        let snapshot = relay.state.registry.load_full();
        let usable: HashMap<&str, bool> = names
            .iter()
            .map(|name| {
                let runtime = &snapshot.accounts[&ids[name]];
                let eligible = matches!(
                    runtime.read_state(|state| state.eligibility(now, ModelFamily::Sonnet)),
                    Eligibility::Eligible
                );
                (*name, eligible)
            })
            .collect();
        let before: HashMap<&str, usize> = names
            .iter()
            .map(|n| (*n, h.mock.count_for(&format!("sk-{n}"))))
            .collect();

        let response = h.messages(&key, message_body(false)).await;
        if response.status() == 200 {
            successes += 1;
        }
        let _ = response.bytes().await;

        for name in names {
            let tried = h.mock.count_for(&format!("sk-{name}")) > before[name];
            if tried && !usable[name] {
                *wasted.entry(name).or_default() += 1;
            }
            if tried && name == "down" && recovered && first_traffic_after_recovery.is_none() {
                first_traffic_after_recovery = Some(now);
            }
        }
    }

    let success_rate = successes as f64 / REQUESTS as f64;
    // The rate-limiting accounts really were rate-limited: count their 429 attempts.
    relay.state.usage.flush().await;
    let mut rate_limits_served = 0;
    for name in ["rl1", "rl2"] {
        let (rows, _) = relay
            .state
            .store
            .list_usage(&UsageFilter {
                account_id: Some(ids[name]),
                limit: 100_000,
                ..UsageFilter::default()
            })
            .await
            .unwrap();
        rate_limits_served += rows.iter().filter(|r| r.class == "rate_limited").count();
    }
    assert!(
        rate_limits_served >= 8,
        "only {rate_limits_served} rate limits were served"
    );
    let recovery_wait = first_traffic_after_recovery.map(|t| t - recover_at);
    println!(
        "simulation: {REQUESTS} requests over {}s of virtual time; success rate {:.4}%; \
         attempts on unusable accounts {wasted:?}; probes sent {probes_sent}; \
         client attempts on the down account while down: {down_attempts_while_down}; \
         rate-limited answers: {}; \
         the recovered account got traffic again after {:?} ms",
        REQUESTS as i64 * STEP_MS / 1000,
        success_rate * 100.0,
        rate_limits_served,
        recovery_wait,
    );
    assert!(success_rate >= 0.999, "success rate {success_rate}");
    // A half-open account admits its one trial: eligibility reports it as eligible, so any
    // attempt counted here went to an account that was cooling down, disabled or open.
    assert!(
        wasted.is_empty(),
        "attempts on unusable accounts: {wasted:?}"
    );
    // The breaker (threshold 5) and the health monitor stop traffic to the down account after
    // a handful of failures; afterwards only single half-open trials reach it.
    assert!(
        (5..=12).contains(&down_attempts_while_down),
        "client attempts on the down account while it was down: {down_attempts_while_down}"
    );
    let wait = recovery_wait.expect("the recovered account never got traffic again");
    assert!(wait <= PROBE_INTERVAL_MS, "recovery took {wait} ms");

    relay.shutdown().await;
}
