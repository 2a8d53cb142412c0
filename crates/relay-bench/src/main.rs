//! `relay-bench`: the measurements `wrk` cannot take, for `bench/run.sh`.
//!
//! - `ttfb`: sequential stream requests (concurrency 1); time to the response head and to the
//!   first `content_block_delta`, p50/p99.
//! - `streams`: N concurrent stream requests held open until they end; reports how many
//!   completed intact.
//! - `failover`: sequential requests whose first account answers 429 and second serves;
//!   before each one the first account is re-enabled through the admin API (outside the
//!   timed section), so every timed request really fails over.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;

#[derive(Debug, Parser)]
struct Cli {
    /// Base URL of the target (mock, nginx or relay).
    #[arg(long)]
    url: String,
    /// x-api-key to send.
    #[arg(long, default_value = "bench")]
    key: String,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    Ttfb {
        #[arg(long, default_value_t = 2000)]
        requests: usize,
    },
    Streams {
        #[arg(long, default_value_t = 1000)]
        concurrency: usize,
    },
    Failover {
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Admin token and the id of the account to re-enable before each request.
        #[arg(long)]
        admin_token: String,
        #[arg(long)]
        account_id: i64,
    },
    /// Sequential non-stream requests: whole-request latency p50/p99.
    Latency {
        #[arg(long, default_value_t = 2000)]
        requests: usize,
    },
}

fn body(stream: bool) -> String {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    })
    .to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name}: n={} p50={:.3}ms p99={:.3}ms",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99)
    );
}

async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<(f64, f64, bool)> {
    let started = Instant::now();
    let response = client
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(body(true))
        .send()
        .await?;
    let head = started.elapsed().as_secs_f64() * 1000.0;
    if !response.status().is_success() {
        bail!("status {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut first_delta = None;
    let mut seen = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        seen.extend_from_slice(&chunk);
        if first_delta.is_none() && seen.windows(19).any(|w| w == b"content_block_delta") {
            first_delta = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let complete = seen.windows(12).any(|w| w == b"message_stop");
    Ok((head, first_delta.unwrap_or(f64::NAN), complete))
}

/// One non-stream request, timed from send to the end of the answer (ms).
async fn timed_message(client: &reqwest::Client, url: &str, key: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = client
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(body(false))
        .send()
        .await
        .context("request")?;
    let status = response.status();
    let _ = response.bytes().await?;
    if !status.is_success() {
        bail!("status {status}");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(600))
        .build()?;
    match cli.command {
        Mode::Ttfb { requests } => {
            let mut heads = Vec::with_capacity(requests);
            let mut deltas = Vec::with_capacity(requests);
            // Warm the connection first.
            for _ in 0..50 {
                one_stream(&client, &cli.url, &cli.key).await?;
            }
            for _ in 0..requests {
                let (head, delta, _) = one_stream(&client, &cli.url, &cli.key).await?;
                heads.push(head);
                deltas.push(delta);
            }
            report("time_to_first_byte", heads);
            report("time_to_first_text_delta", deltas);
        }
        Mode::Streams { concurrency } => {
            let started = Instant::now();
            let tasks = (0..concurrency).map(|_| one_stream(&client, &cli.url, &cli.key));
            let results = futures_util::future::join_all(tasks).await;
            let complete = results
                .iter()
                .filter(|r| matches!(r, Ok((_, _, true))))
                .count();
            println!(
                "streams: {complete}/{concurrency} complete in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        Mode::Latency { requests } => {
            let mut samples = Vec::with_capacity(requests);
            for i in 0..requests + 50 {
                let took = timed_message(&client, &cli.url, &cli.key).await?;
                if i >= 50 {
                    samples.push(took);
                }
            }
            report("latency", samples);
        }
        Mode::Failover {
            requests,
            admin_token,
            account_id,
        } => {
            let mut samples = Vec::with_capacity(requests);
            for i in 0..requests + 50 {
                let enabled = client
                    .post(format!("{}/api/v1/admin/fallback/enable-account", cli.url))
                    .bearer_auth(&admin_token)
                    .body(format!("{{\"account_id\":{account_id}}}"))
                    .send()
                    .await?;
                if !enabled.status().is_success() {
                    bail!("enable-account: {}", enabled.status());
                }
                let took = timed_message(&client, &cli.url, &cli.key).await?;
                if i >= 50 {
                    samples.push(took);
                }
            }
            report("failover_latency", samples);
        }
    }
    Ok(())
}
