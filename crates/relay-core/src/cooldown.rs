//! How long a rate-limited account cools down, read from the upstream's own words
//! (PRODUCT.md §5.1, the 429 row).
//!
//! Anthropic's API reports its limits in response headers: `retry-after` (seconds, or an HTTP
//! date), and per limit a `-remaining` count and a `-reset` time (RFC 3339) for `requests`,
//! `tokens`, `input-tokens` and `output-tokens`. Those limits are enforced per model family, so
//! a cooldown derived from them is scoped to the family: an account that exhausted its Opus
//! tokens still serves Sonnet. Subscription (OAuth) accounts get the `unified` headers
//! instead: `anthropic-ratelimit-unified-status` (`allowed`, `allowed_warning`, `rejected`),
//! `-unified-reset` (unix seconds), per-window `-unified-5h-*` / `-unified-7d-*`, and
//! `-unified-representative-claim` naming the binding window (`five_hour`, `seven_day`, and
//! model-specific windows such as `seven_day_opus`). Unified limits cover the whole
//! subscription, so they cool the whole account — except when the representative claim names
//! a model family (it contains `opus` or `sonnet`), in which case only that family waits.
//!
//! Choosing the time, in order:
//! 1. among limits known to be exhausted (`-remaining: 0`, or a unified status `rejected`), the
//!    latest future reset — the account is usable only when every exhausted limit is back;
//! 2. else the earliest future reset among limits whose remaining count is unknown;
//! 3. else `retry-after` (or `retry-after-ms`);
//! 4. else the caller's default.
//!
//! OpenAI-compatible servers (accounts of the `openai` platform) report
//! `x-ratelimit-remaining-{requests,tokens}` and `x-ratelimit-reset-{requests,tokens}`, the
//! reset as a duration from now (`1s`, `6m0s`, `20ms`); they are read like Anthropic's
//! per-model limits.
//!
//! Limits known not to be exhausted are ignored: a 429 despite headroom comes from elsewhere
//! and their reset times say nothing about it. The result is clamped to
//! [now + 1 s, now + 24 h] so a clock skew or a garbage header can neither hammer an upstream
//! nor park an account for days.

use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::duration::{parse_http_date, parse_rfc3339};
use crate::model::ModelFamily;
use crate::UnixMillis;

/// What a cooldown blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CooldownScope {
    /// Every request on the account.
    Account,
    /// Only requests for models of this family.
    Family(ModelFamily),
}

impl CooldownScope {
    /// Whether a request for a model of `family` is blocked by a cooldown of this scope.
    pub fn blocks(self, family: ModelFamily) -> bool {
        match self {
            CooldownScope::Account => true,
            CooldownScope::Family(cooled) => cooled == family,
        }
    }
}

/// Which signal set the cooldown's end, for logs and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CooldownSource {
    /// The `retry-after` header.
    RetryAfter,
    /// A reset header, by name (such as `anthropic-ratelimit-tokens-reset`).
    Reset(&'static str),
    /// No usable header: the caller's default duration.
    Default,
}

/// A rate-limit cooldown: the account (or one model family on it) is skipped until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cooldown {
    pub until: UnixMillis,
    pub scope: CooldownScope,
    pub source: CooldownSource,
}

const MIN_COOLDOWN_MILLIS: i64 = 1_000;
const MAX_COOLDOWN_MILLIS: i64 = 24 * 60 * 60 * 1_000;

/// The per-family limits of Anthropic's API: (remaining header, reset header).
const FAMILY_LIMITS: [(&str, &str); 4] = [
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ),
];

/// The subscription-wide limits: (status header, reset header).
const UNIFIED_LIMITS: [(&str, &str); 3] = [
    (
        "anthropic-ratelimit-unified-status",
        "anthropic-ratelimit-unified-reset",
    ),
    (
        "anthropic-ratelimit-unified-5h-status",
        "anthropic-ratelimit-unified-5h-reset",
    ),
    (
        "anthropic-ratelimit-unified-7d-status",
        "anthropic-ratelimit-unified-7d-reset",
    ),
];

/// OpenAI's limits: (remaining, reset) header pairs, resets as durations from now.
const OPENAI_LIMITS: [(&str, &str); 2] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
];

const REPRESENTATIVE_CLAIM: &str = "anthropic-ratelimit-unified-representative-claim";

/// One reset time the headers announced.
struct ResetCandidate {
    header: &'static str,
    at: UnixMillis,
    /// `Some(true)` when the headers say this limit is used up, `Some(false)` when they say it
    /// has headroom, `None` when they do not say.
    exhausted: Option<bool>,
    scope: CooldownScope,
}

/// The cooldown for a 429 answer on a request for a model of `model_family`.
pub fn rate_limit_cooldown(
    headers: &HeaderMap,
    model_family: ModelFamily,
    now: UnixMillis,
    default: Duration,
) -> Cooldown {
    let candidates = reset_candidates(headers, model_family, now);
    let future = |candidate: &&ResetCandidate| candidate.at > now;

    let latest_exhausted = candidates
        .iter()
        .filter(|c| c.exhausted == Some(true))
        .filter(future)
        .max_by_key(|c| c.at);
    let earliest_unknown = || {
        candidates
            .iter()
            .filter(|c| c.exhausted.is_none())
            .filter(future)
            .min_by_key(|c| c.at)
    };

    let (until, scope, source) = if let Some(chosen) = latest_exhausted {
        (
            chosen.at,
            chosen.scope,
            CooldownSource::Reset(chosen.header),
        )
    } else if let Some(chosen) = earliest_unknown() {
        (
            chosen.at,
            chosen.scope,
            CooldownSource::Reset(chosen.header),
        )
    } else if let Some(at) = retry_after(headers, now) {
        (at, CooldownScope::Account, CooldownSource::RetryAfter)
    } else {
        let default_millis = i64::try_from(default.as_millis()).unwrap_or(MAX_COOLDOWN_MILLIS);
        (
            now.saturating_add(default_millis),
            CooldownScope::Account,
            CooldownSource::Default,
        )
    };
    Cooldown {
        until: until.clamp(now + MIN_COOLDOWN_MILLIS, now + MAX_COOLDOWN_MILLIS),
        scope,
        source,
    }
}

/// The time `retry-after` points at: integer (or decimal) seconds from `now`, or an HTTP date;
/// or, without it, `retry-after-ms` (milliseconds, sent by OpenAI-compatible servers).
pub fn retry_after(headers: &HeaderMap, now: UnixMillis) -> Option<UnixMillis> {
    let Some(text) = header_text(headers, "retry-after") else {
        let millis = header_text(headers, "retry-after-ms")?
            .parse::<f64>()
            .ok()?;
        if !(millis.is_finite() && millis >= 0.0) {
            return None;
        }
        return Some(now.saturating_add(millis.min(i64::MAX as f64 / 2.0) as i64));
    };
    if let Ok(seconds) = text.parse::<f64>() {
        if !(seconds.is_finite() && seconds >= 0.0) {
            return None;
        }
        let millis = (seconds * 1000.0).min(i64::MAX as f64 / 2.0) as i64;
        return Some(now.saturating_add(millis));
    }
    parse_http_date(text)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let text = headers.get(name)?.to_str().ok()?.trim();
    (!text.is_empty()).then_some(text)
}

fn reset_candidates(
    headers: &HeaderMap,
    model_family: ModelFamily,
    now: UnixMillis,
) -> Vec<ResetCandidate> {
    let mut candidates = Vec::new();
    let family = CooldownScope::Family(model_family);
    let openai_reset =
        |text: &str| parse_go_duration_millis(text).map(|after| now.saturating_add(after));
    push_remaining_limits(
        &mut candidates,
        headers,
        &OPENAI_LIMITS,
        openai_reset,
        family,
    );
    push_remaining_limits(
        &mut candidates,
        headers,
        &FAMILY_LIMITS,
        parse_reset_time,
        family,
    );
    let unified_scope = unified_scope(headers);
    for (status_header, reset_header) in UNIFIED_LIMITS {
        let Some(at) = header_text(headers, reset_header).and_then(parse_reset_time) else {
            continue;
        };
        let exhausted = header_text(headers, status_header).map(|status| status == "rejected");
        candidates.push(ResetCandidate {
            header: reset_header,
            at,
            exhausted,
            scope: unified_scope,
        });
    }
    candidates
}

/// A candidate for each `(remaining, reset)` pair of headers whose reset `reset_at` reads:
/// exhausted when the remaining count is at or below zero, unknown without one.
fn push_remaining_limits(
    candidates: &mut Vec<ResetCandidate>,
    headers: &HeaderMap,
    limits: &[(&'static str, &'static str)],
    reset_at: impl Fn(&str) -> Option<UnixMillis>,
    scope: CooldownScope,
) {
    for (remaining_header, reset_header) in limits {
        let Some(at) = header_text(headers, reset_header).and_then(&reset_at) else {
            continue;
        };
        let exhausted = header_text(headers, remaining_header)
            .and_then(|text| text.parse::<f64>().ok())
            .map(|remaining| remaining <= 0.0);
        candidates.push(ResetCandidate {
            header: reset_header,
            at,
            exhausted,
            scope,
        });
    }
}

/// Unified limits cool the whole account unless the binding window is a model family's own.
fn unified_scope(headers: &HeaderMap) -> CooldownScope {
    let claim = header_text(headers, REPRESENTATIVE_CLAIM)
        .unwrap_or("")
        .to_ascii_lowercase();
    match ModelFamily::of(&claim) {
        ModelFamily::Other => CooldownScope::Account,
        family => CooldownScope::Family(family),
    }
}

/// A duration as OpenAI writes its resets (Go's notation): numbers with units `h`, `m`, `s`,
/// `ms`, `us`/`µs` or `ns`, one after another (`1h2m3.5s`), in milliseconds rounded up.
fn parse_go_duration_millis(text: &str) -> Option<i64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total_ms = 0.0_f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let (unit_ms, unit_len) = [
            ("ms", 1.0, 2),
            ("us", 0.001, 2),
            ("µs", 0.001, "µs".len()),
            ("ns", 0.000_001, 2),
            ("h", 3_600_000.0, 1),
            ("m", 60_000.0, 1),
            ("s", 1000.0, 1),
        ]
        .into_iter()
        .find(|(unit, _, _)| rest.starts_with(unit))
        .map(|(_, ms, len)| (ms, len))?;
        total_ms += number * unit_ms;
        rest = &rest[unit_len..];
    }
    (total_ms.is_finite() && total_ms <= MAX_COOLDOWN_MILLIS as f64 * 2.0)
        .then(|| total_ms.ceil() as i64)
}

/// Reset headers are RFC 3339 on the API and unix seconds on the unified limits; accept
/// either everywhere, since compatible providers mix them up.
fn parse_reset_time(text: &str) -> Option<UnixMillis> {
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then_some((seconds * 1000.0) as i64);
    }
    parse_rfc3339(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::format_rfc3339;

    const NOW: UnixMillis = 1_738_310_400_000; // 2025-01-31T08:00:00Z
    const DEFAULT: Duration = Duration::from_secs(60);

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn at(seconds_from_now: i64) -> String {
        format_rfc3339(NOW + seconds_from_now * 1000)
    }

    fn unix(seconds_from_now: i64) -> String {
        ((NOW / 1000) + seconds_from_now).to_string()
    }

    fn cooldown(pairs: &[(&'static str, String)]) -> Cooldown {
        rate_limit_cooldown(&headers(pairs), ModelFamily::Opus, NOW, DEFAULT)
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let h = headers(&[("retry-after", "30".to_string())]);
        assert_eq!(retry_after(&h, NOW), Some(NOW + 30_000));
        let h = headers(&[("retry-after", "1.5".to_string())]);
        assert_eq!(retry_after(&h, NOW), Some(NOW + 1_500));
        let h = headers(&[("retry-after", "Fri, 31 Jan 2025 08:02:00 GMT".to_string())]);
        assert_eq!(retry_after(&h, NOW), Some(NOW + 120_000));
        let h = headers(&[("retry-after", "-5".to_string())]);
        assert_eq!(retry_after(&h, NOW), None);
        let h = headers(&[("retry-after", "soon".to_string())]);
        assert_eq!(retry_after(&h, NOW), None);
        assert_eq!(retry_after(&HeaderMap::new(), NOW), None);
    }

    #[test]
    fn retry_after_alone_cools_the_account() {
        let c = cooldown(&[("retry-after", "30".to_string())]);
        assert_eq!(
            c,
            Cooldown {
                until: NOW + 30_000,
                scope: CooldownScope::Account,
                source: CooldownSource::RetryAfter
            }
        );
    }

    #[test]
    fn no_headers_use_the_default() {
        let c = cooldown(&[]);
        assert_eq!(c.until, NOW + 60_000);
        assert_eq!(c.scope, CooldownScope::Account);
        assert_eq!(c.source, CooldownSource::Default);
    }

    #[test]
    fn each_family_reset_header_is_read_and_scoped_to_the_family() {
        for (remaining, reset) in FAMILY_LIMITS {
            let c = cooldown(&[(reset, at(45)), (remaining, "0".to_string())]);
            assert_eq!(c.until, NOW + 45_000, "{reset}");
            assert_eq!(c.scope, CooldownScope::Family(ModelFamily::Opus), "{reset}");
            assert_eq!(c.source, CooldownSource::Reset(reset));
            // Without a remaining count the reset is still used.
            let c = cooldown(&[(reset, at(45))]);
            assert_eq!(c.until, NOW + 45_000, "{reset}");
        }
    }

    #[test]
    fn latest_exhausted_reset_wins_over_retry_after() {
        let c = cooldown(&[
            ("retry-after", "5".to_string()),
            ("anthropic-ratelimit-requests-remaining", "0".to_string()),
            ("anthropic-ratelimit-requests-reset", at(10)),
            ("anthropic-ratelimit-tokens-remaining", "0".to_string()),
            ("anthropic-ratelimit-tokens-reset", at(50)),
            (
                "anthropic-ratelimit-output-tokens-remaining",
                "8000".to_string(),
            ),
            ("anthropic-ratelimit-output-tokens-reset", at(90)),
        ]);
        assert_eq!(c.until, NOW + 50_000);
        assert_eq!(
            c.source,
            CooldownSource::Reset("anthropic-ratelimit-tokens-reset")
        );
    }

    #[test]
    fn earliest_unknown_reset_when_nothing_is_known_exhausted() {
        let c = cooldown(&[
            ("anthropic-ratelimit-requests-reset", at(40)),
            ("anthropic-ratelimit-tokens-reset", at(20)),
            ("retry-after", "90".to_string()),
        ]);
        assert_eq!(c.until, NOW + 20_000);
        assert_eq!(
            c.source,
            CooldownSource::Reset("anthropic-ratelimit-tokens-reset")
        );
    }

    #[test]
    fn limits_with_headroom_are_ignored() {
        let c = cooldown(&[
            ("anthropic-ratelimit-requests-remaining", "12".to_string()),
            ("anthropic-ratelimit-requests-reset", at(40)),
            ("retry-after", "7".to_string()),
        ]);
        assert_eq!(c.until, NOW + 7_000);
        assert_eq!(c.source, CooldownSource::RetryAfter);
    }

    #[test]
    fn past_resets_fall_through() {
        let c = cooldown(&[
            ("anthropic-ratelimit-tokens-remaining", "0".to_string()),
            ("anthropic-ratelimit-tokens-reset", at(-30)),
            ("retry-after", "3".to_string()),
        ]);
        assert_eq!(c.until, NOW + 3_000);
        assert_eq!(c.source, CooldownSource::RetryAfter);
    }

    #[test]
    fn unified_reset_cools_the_whole_account() {
        let c = cooldown(&[
            ("anthropic-ratelimit-unified-status", "rejected".to_string()),
            ("anthropic-ratelimit-unified-reset", unix(3600)),
            (REPRESENTATIVE_CLAIM, "five_hour".to_string()),
        ]);
        assert_eq!(c.until, NOW + 3_600_000);
        assert_eq!(c.scope, CooldownScope::Account);
        assert_eq!(
            c.source,
            CooldownSource::Reset("anthropic-ratelimit-unified-reset")
        );
    }

    #[test]
    fn unified_window_headers_are_read() {
        let c = cooldown(&[
            (
                "anthropic-ratelimit-unified-5h-status",
                "allowed".to_string(),
            ),
            ("anthropic-ratelimit-unified-5h-reset", unix(600)),
            (
                "anthropic-ratelimit-unified-7d-status",
                "rejected".to_string(),
            ),
            ("anthropic-ratelimit-unified-7d-reset", unix(7200)),
        ]);
        assert_eq!(c.until, NOW + 7_200_000);
        assert_eq!(
            c.source,
            CooldownSource::Reset("anthropic-ratelimit-unified-7d-reset")
        );
    }

    #[test]
    fn a_family_claim_scopes_unified_limits_to_that_family() {
        let c = cooldown(&[
            ("anthropic-ratelimit-unified-status", "rejected".to_string()),
            ("anthropic-ratelimit-unified-reset", unix(1800)),
            (REPRESENTATIVE_CLAIM, "seven_day_opus".to_string()),
        ]);
        assert_eq!(c.scope, CooldownScope::Family(ModelFamily::Opus));
        assert!(c.scope.blocks(ModelFamily::Opus));
        assert!(!c.scope.blocks(ModelFamily::Sonnet));
        assert!(CooldownScope::Account.blocks(ModelFamily::Haiku));
    }

    #[test]
    fn clamped_to_one_second_and_one_day() {
        let c = cooldown(&[("retry-after", "0".to_string())]);
        assert_eq!(c.until, NOW + 1_000);
        let c = cooldown(&[("retry-after", "999999".to_string())]);
        assert_eq!(c.until, NOW + 86_400_000);
        let c = cooldown(&[("anthropic-ratelimit-unified-reset", unix(10 * 86_400))]);
        assert_eq!(c.until, NOW + 86_400_000);
        let c = rate_limit_cooldown(&HeaderMap::new(), ModelFamily::Opus, NOW, Duration::ZERO);
        assert_eq!(c.until, NOW + 1_000);
    }

    #[test]
    fn garbage_headers_are_ignored() {
        let c = cooldown(&[
            ("anthropic-ratelimit-tokens-reset", "tomorrow".to_string()),
            ("anthropic-ratelimit-tokens-remaining", "none".to_string()),
        ]);
        assert_eq!(c.source, CooldownSource::Default);
    }

    #[test]
    fn openai_reset_durations_cool_down_until_the_exhausted_limit_is_back() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0".to_owned()),
            ("x-ratelimit-reset-requests", "6m0s".to_owned()),
            ("x-ratelimit-remaining-tokens", "1000".to_owned()),
            ("x-ratelimit-reset-tokens", "20ms".to_owned()),
        ]);
        let cooldown = rate_limit_cooldown(&h, ModelFamily::Sonnet, NOW, DEFAULT);
        assert_eq!(cooldown.until, NOW + 360_000);
        assert_eq!(cooldown.scope, CooldownScope::Family(ModelFamily::Sonnet));
        assert_eq!(
            cooldown.source,
            CooldownSource::Reset("x-ratelimit-reset-requests")
        );
        let h = headers(&[("retry-after-ms", "2500".to_owned())]);
        assert_eq!(
            rate_limit_cooldown(&h, ModelFamily::Sonnet, NOW, DEFAULT).until,
            NOW + 2_500
        );
    }

    #[test]
    fn go_durations_parse_to_milliseconds_rounded_up() {
        assert_eq!(parse_go_duration_millis("1s"), Some(1_000));
        assert_eq!(parse_go_duration_millis("1h2m3.5s"), Some(3_723_500));
        assert_eq!(parse_go_duration_millis("20ms"), Some(20));
        assert_eq!(parse_go_duration_millis("1.5us"), Some(1));
        assert_eq!(parse_go_duration_millis("7m"), Some(420_000));
        assert_eq!(parse_go_duration_millis(""), None);
        assert_eq!(parse_go_duration_millis("5"), None);
        assert_eq!(parse_go_duration_millis("5x"), None);
        assert_eq!(parse_go_duration_millis("s"), None);
    }
}
