//! The whole per-request selection as the attempt loop runs it (issue: performance):
//! `forward::plan` reads every account's live state, builds the candidates and lets the
//! group's strategy rank them (the account to try and a spare; a request that fails over
//! ranks again, up to ten). `cargo bench -p relay-proxy`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up: a failure is a broken benchmark"
)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use relay_core::config::FallbackConfig;
use relay_core::model::{Account, Credential, Group, ModelFamily, Platform};
use relay_core::strategy::StrategyRegistry;
use relay_proxy::forward::{plan, FIRST_PLAN_LIMIT};
use relay_proxy::registry::{GroupRuntime, Registry, RegistrySource};

/// The relay's own allocator, so the accounts lie in memory as they do in the relay.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: i64 = 1_800_000_000_000;

fn source(accounts: usize, strategy: &str) -> RegistrySource {
    let group = Group {
        id: 1,
        name: "bench".to_owned(),
        fallback: serde_json::json!({ "strategy": strategy }),
        created_at: NOW,
        updated_at: NOW,
    };
    let accounts = (0..accounts)
        .map(|i| {
            let account = Account {
                id: i as i64 + 1,
                name: format!("account-{i}"),
                platform: Platform::ClaudeConsole,
                base_url: "http://127.0.0.1:1".to_owned(),
                group_id: 1,
                priority: (i % 10) as i32,
                weight: 1 + (i % 7) as u32,
                enabled: true,
                proxy_url: None,
                model_allowlist: Vec::new(),
                model_mapping: BTreeMap::new(),
                max_concurrency: None,
                created_at: NOW,
                updated_at: NOW,
            };
            (account, Credential::ApiKey(format!("sk-{i}")))
        })
        .collect();
    RegistrySource {
        groups: vec![group],
        accounts,
        keys: Vec::new(),
    }
}

/// A group of `n` accounts under `strategy`, each with some history so health figures are not
/// all defaults.
fn group(n: usize, strategy: &str, strategies: &StrategyRegistry) -> Arc<GroupRuntime> {
    let registry = Registry::default();
    registry.rebuild(source(n, strategy), &FallbackConfig::default(), strategies);
    let snapshot = registry.load_full();
    let group = snapshot.groups.get(&1).expect("the group").clone();
    for (i, runtime) in group.members.iter().map(|m| &m.runtime).enumerate() {
        for k in 0..(i % 5) {
            let at = NOW - 1_000 * k as i64;
            runtime.update_state(at, |state| {
                state.record_outcome(
                    at,
                    relay_core::classify::OutcomeClass::Success,
                    200.0 + (i % 50) as f64,
                    ModelFamily::Sonnet,
                    None,
                )
            });
        }
    }
    group
}

fn plan_per_request(c: &mut Criterion) {
    let strategies = StrategyRegistry::with_builtin();
    // `plan`: what every request runs, ranking the account to try and a spare.
    // `plan_limit_10`: what a request that fails over runs once more, ranking up to
    // (max_retries + 1) * 2 + 2 accounts (10 by default) before it leaves out those taken.
    for (name, limit) in [("plan", FIRST_PLAN_LIMIT), ("plan_limit_10", 10)] {
        let mut bench = c.benchmark_group(name);
        for n in [10usize, 100, 10_000] {
            for strategy in strategies.names() {
                let group = group(n, &strategy, &strategies);
                bench.bench_with_input(BenchmarkId::new(strategy, n), &group, |b, group| {
                    b.iter(|| {
                        black_box(plan(
                            black_box(group),
                            Some("claude-sonnet-4-5"),
                            ModelFamily::Sonnet,
                            None,
                            NOW,
                            limit,
                        ))
                    })
                });
            }
        }
        bench.finish();
    }
}

criterion_group!(benches, plan_per_request);
criterion_main!(benches);
