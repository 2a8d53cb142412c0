//! The attempt loop (PRODUCT.md §5.2): pick accounts in the group strategy's order and try
//! them one by one until one answers, deciding before the first byte reaches the client.
//!
//! - Never the same account twice in one request; accounts found ineligible when their turn
//!   comes are skipped without using up an attempt.
//! - At most `max_retries` further accounts after the first, within `request_timeout`.
//! - `retry_delay` backoff (exponential, with jitter) only after overloaded, server and
//!   network errors; failover after 429 and auth errors is immediate. Every wait is
//!   cancelled with the request when the client goes away.
//! - A client error (400, 404, 413, 422) goes back unchanged and never counts against the
//!   account.
//! - A stream is held until the upstream's first SSE event (within `first_byte_timeout`), so
//!   an `event: error` sent as the first event still fails over.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use rand::Rng;
use relay_core::breaker::{Admission, BreakerPhase};
use relay_core::classify::{classify_response, classify_stream_error_event, OutcomeClass};
use relay_core::config::FallbackConfig;
use relay_core::cooldown::rate_limit_cooldown;
use relay_core::envelope::ErrorKind;
use relay_core::metrics::{AttemptSample, BreakerScope, RequestSample};
use relay_core::model::{Account, Usage};
use relay_core::model::{ModelFamily, Platform};
use relay_core::openai::Refusals;
use relay_core::sse::{FirstEvent, SseUsageParser};
use relay_core::state::{Eligibility, StateEvent};
use relay_core::strategy::{Candidate, CandidateFeed, ScreenStep, SelectionContext, Survey};
use relay_core::UnixMillis;
use relay_store::UsageRow;
use serde::Serialize;

use crate::auth::ClientIdentity;
use crate::body_stream::{
    gather_received, relay_body, AttemptRecord, CommittedAttempt, EarlyEnd, UsageReader,
};
use crate::error::RelayError;
use crate::http_clients::{UpstreamAnswer, UpstreamBody};
use crate::logs;
use crate::oauth::{self, OAuthError};
use crate::registry::{lock, AccountRuntime, GroupRuntime, Member};
use crate::state::RelayState;
use crate::upstream::{account_headers, client_headers, upstream_uri, Forwarded};
use crate::view::{EligibleFigures, FamilyBit, PublishedView, ReadTime, Slot};

/// How much of an error answer is read to classify it.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The longest single backoff wait, whatever `retry_delay` and the attempt number say.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The seed's `fallback_info`, beside `error` when every account failed.
#[derive(Debug, Clone, Serialize)]
pub struct FallbackInfo {
    pub attempt_count: usize,
    pub strategy_used: String,
    pub failure_reason: String,
    pub duration: String,
    pub attempts: Vec<AttemptInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptInfo {
    pub account_id: i64,
    pub status: Option<u16>,
    pub class: &'static str,
    pub duration_ms: u64,
}

/// Which upstream route a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Messages,
    CountTokens,
    Models,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            Endpoint::Models => "/v1/models",
        }
    }

    fn method(self) -> Method {
        match self {
            Endpoint::Models => Method::GET,
            _ => Method::POST,
        }
    }
}

/// One client request, read and authenticated.
#[derive(Debug)]
pub struct ForwardRequest {
    pub request_id: Arc<str>,
    pub endpoint: Endpoint,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub model: Option<String>,
    pub stream: bool,
    pub session_key: Option<String>,
    pub identity: ClientIdentity,
    pub started: Instant,
}

/// What one attempt came to.
enum AttemptOutcome {
    /// The answer is going to the client.
    Committed(Box<CommittedAnswer>),
    /// A client error: the upstream's answer goes back unchanged.
    PassThrough(Response),
    Failed(AttemptFailure),
    /// An `openai` account refused something the request can do without (a `max_tokens`
    /// over the limit it named, `stream_options`): asked again as `adjusted`, else its
    /// refusal goes back.
    Refused {
        adjusted: ChatAdjust,
        refusal: Response,
    },
}

/// How an `openai` account's Chat Completions request is fitted to what its server accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChatAdjust {
    /// `max_tokens` at most this: the limit the server named.
    max_tokens_cap: Option<u64>,
    /// The optional fields the server refused (for the model asked), left out.
    refusals: Refusals,
}

struct AttemptFailure {
    class: OutcomeClass,
    status: Option<u16>,
    reason: String,
    headers: Option<HeaderMap>,
}

impl AttemptFailure {
    fn network(reason: String) -> Self {
        AttemptFailure {
            class: OutcomeClass::Network,
            status: None,
            reason,
            headers: None,
        }
    }
}

/// Logs the state machine's events in the configured language, and counts breaker
/// transitions in the metrics.
pub fn log_state_events(state: &RelayState, account_info: &Account, events: &[StateEvent]) {
    if events.is_empty() {
        return;
    }
    // Other instances learn of disables, cooldowns and breaker phases (cluster mode).
    state.publish_account(account_info.id);
    let lang = state.settings.log_lang;
    let account = account_info.name.as_str();
    let now = state.now();
    for event in events {
        let transition = match event {
            StateEvent::BreakerOpened { .. } => Some(BreakerPhase::Open),
            StateEvent::BreakerHalfOpen => Some(BreakerPhase::HalfOpen),
            StateEvent::BreakerClosed => Some(BreakerPhase::Closed),
            _ => None,
        };
        if let Some(phase) = transition {
            lock(&state.metrics).record_breaker_transition(
                BreakerScope::Account(account_info.id),
                phase,
                now,
            );
        }
        match event {
            StateEvent::HealthChanged { from, to } => tracing::warn!(
                %account,
                "{}",
                logs::health_changed(lang, account, status_name(*from), status_name(*to))
            ),
            StateEvent::BreakerOpened { until, .. } => {
                tracing::warn!(%account, "{}", logs::breaker_opened(lang));
                let wait = Duration::from_millis(u64::try_from(until - state.now()).unwrap_or(0));
                tracing::warn!(%account, "{}", logs::half_open_in(lang, wait));
            }
            StateEvent::BreakerHalfOpen => {}
            StateEvent::BreakerClosed => {
                tracing::info!(%account, "{}", logs::breaker_closed(lang, account))
            }
            StateEvent::TemporarilyDisabled { until } => tracing::warn!(
                %account,
                "{}",
                logs::temporarily_disabled(
                    lang,
                    account,
                    &relay_core::duration::format_rfc3339(*until)
                )
            ),
            StateEvent::Disabled { reason, .. } => tracing::warn!(
                %account,
                "{}",
                logs::disabled(lang, account, reason.as_str())
            ),
            StateEvent::CoolingDown { until, .. } => tracing::info!(
                %account,
                "{}",
                logs::cooling_down(lang, account, &relay_core::duration::format_rfc3339(*until))
            ),
            StateEvent::Recovered => tracing::info!(%account, "{}", logs::recovered(lang, account)),
        }
    }
}

fn status_name(status: relay_core::strategy::HealthStatus) -> &'static str {
    match status {
        relay_core::strategy::HealthStatus::Healthy => "healthy",
        relay_core::strategy::HealthStatus::Degraded => "degraded",
        relay_core::strategy::HealthStatus::Unhealthy => "unhealthy",
    }
}

thread_local! {
    /// `plan`'s candidate list, kept from one request to the next on each thread: a group of
    /// thousands of accounts would otherwise allocate (and fault in) a list that size for
    /// every request.
    static CANDIDATES: RefCell<Vec<Candidate>> = const { RefCell::new(Vec::new()) };
    /// The members a screened `plan` took, by candidate index, kept likewise.
    static MEMBERS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `count` slots of this thread's list `kept` to fill in (`blank` fills the
/// slots the list grows by).
///
/// Slots rather than a list to push to: the loop that fills them reads each account's view
/// behind a fence, and a fence makes the compiler read a list's length back from memory on
/// every push; a slot's index is a plain local. The list only grows, so after the first
/// requests it is never written twice over.
fn with_slots<T: Clone, R>(
    kept: &'static LocalKey<RefCell<Vec<T>>>,
    count: usize,
    blank: T,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    kept.with(|scratch| {
        let mut borrowed = scratch.try_borrow_mut();
        // Only a strategy that planned from inside its own ranking could find it borrowed.
        let mut own = Vec::new();
        let list = match borrowed.as_deref_mut() {
            Ok(kept) => kept,
            Err(_) => &mut own,
        };
        if list.len() < count {
            list.resize(count, blank);
        }
        f(&mut list[..count])
    })
}

/// What `plan` learns of the members that may not take the request: the earliest time one
/// may again, and whether every one of them is only rate limited.
struct Skipped {
    earliest_return: Option<UnixMillis>,
    all_rate_limited: bool,
}

impl Skipped {
    /// Nothing learnt yet.
    const NONE: Skipped = Skipped {
        earliest_return: None,
        all_rate_limited: true,
    };

    fn note(&mut self, until: Option<UnixMillis>, rate_limited: bool) {
        self.all_rate_limited &= rate_limited;
        if let Some(until) = until {
            self.earliest_return = Some(self.earliest_return.map_or(until, |e| e.min(until)));
        }
    }
}

/// A candidate's figures: those of its view, its priority, its running count and its
/// concurrency limit.
type MemberFigures = (EligibleFigures, i32, u32, Option<u32>);

/// Reads the long way a member that the fast path in `plan` could not take: one whose
/// settings say the member must be read (disabled, limited to some models or to some
/// concurrency), whose published view lapsed (read under the account's lock, and published
/// again), or which may not take the request. `None` when it may not, noted in `skipped`.
#[cold]
#[inline(never)]
fn read_member_the_long_way(
    published: Slot<'_>,
    member: &Member,
    request: (Option<&str>, ModelFamily, UnixMillis),
    reads_in_flight: bool,
    skipped: &mut Skipped,
) -> Option<MemberFigures> {
    let (model, family, now) = request;
    if !member.enabled || model.is_some_and(|m| !member.allows_model(m)) {
        return None;
    }
    let view = match published.load_for(now, family) {
        Some(view) => view,
        None => member.runtime.refresh_view(now).for_family(family),
    };
    let (until, rate_limited) = match view.eligibility {
        Eligibility::Eligible => (None, true),
        Eligibility::CoolingDown { until } => (Some(until), true),
        Eligibility::BreakerOpen { until } => (Some(until), false),
        Eligibility::Disabled { until, .. } => (until, false),
        Eligibility::AtCapacity => (None, false),
    };
    if view.eligibility != Eligibility::Eligible {
        skipped.note(until, rate_limited);
        return None;
    }
    let in_flight = if reads_in_flight || member.max_concurrency.is_some() {
        member
            .runtime
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    } else {
        0
    };
    if member.max_concurrency.is_some_and(|max| in_flight >= max) {
        skipped.note(None, false);
        return None;
    }
    let figures = EligibleFigures {
        health: view.health,
        requests_in_window: view.requests_in_window,
        success_ewma: view.success_ewma,
        latency_ewma_ms: view.latency_ewma_ms,
    };
    Some((figures, member.priority, in_flight, member.max_concurrency))
}

/// Where `read_candidates` puts the members that may take the request.
trait CandidateSink {
    /// Takes the candidate of member `member`; `false` when nothing more fits.
    fn take(&mut self, member: usize, candidate: Candidate) -> bool;
}

/// The candidates written out, for a strategy that ranks a whole list.
struct Written<'a> {
    slots: &'a mut [Candidate],
    filled: usize,
}

impl CandidateSink for Written<'_> {
    #[inline(always)]
    fn take(&mut self, _member: usize, candidate: Candidate) -> bool {
        // A slot per member: never past the end, so never a panic.
        let Some(slot) = self.slots.get_mut(self.filled) else {
            return false;
        };
        *slot = candidate;
        self.filled += 1;
        true
    }
}

/// The candidates offered to a strategy's screen (its `step`) as they are read; only their
/// members are kept, to map the screen's picks back.
struct Screened<'a, S> {
    step: S,
    members: &'a mut [u32],
    filled: usize,
}

impl<S: ScreenStep> CandidateSink for Screened<'_, S> {
    #[inline(always)]
    fn take(&mut self, member: usize, candidate: Candidate) -> bool {
        let Some(slot) = self.members.get_mut(self.filled) else {
            return false;
        };
        // A group never holds 2³² members.
        *slot = member as u32;
        self.filled += 1;
        self.step.offer(&candidate);
        true
    }
}

/// A group's read loop as a screen's feed: the screen runs it once with its own step.
struct ScreenFeed<'a, 'g> {
    group: &'g GroupRuntime,
    request: (Option<&'g str>, ModelFamily, UnixMillis),
    members: &'a mut [u32],
    filled: usize,
    skipped: Option<Skipped>,
}

impl CandidateFeed for ScreenFeed<'_, '_> {
    #[inline(always)]
    fn feed<S: ScreenStep>(&mut self, step: S) -> S {
        let sink = Screened {
            step,
            members: &mut *self.members,
            filled: 0,
        };
        let (sink, skipped) = read_candidates_for(self.group, self.request, sink);
        self.skipped = Some(skipped);
        self.filled = sink.filled;
        sink.step
    }
}

/// The candidates surveyed for a screen that ranks by figures of the whole group.
struct SurveySink(Survey);

impl CandidateSink for SurveySink {
    #[inline(always)]
    fn take(&mut self, _member: usize, candidate: Candidate) -> bool {
        self.0.offer(&candidate);
        true
    }
}

/// Reads the members that may take the request into `sink`, in the members' order, and
/// returns it with what it learnt of the others. The sink is the loop's own meanwhile: its
/// counters can then live in registers, where behind a reference every atomic read of the
/// loop would make them go through memory.
#[inline(always)]
fn read_candidates<const READS_IN_FLIGHT: bool, S: CandidateSink>(
    group: &GroupRuntime,
    request: (Option<&str>, ModelFamily, UnixMillis),
    mut sink: S,
) -> (S, Skipped) {
    let (_, family, now) = request;
    let mut skipped = Skipped::NONE;
    let family_bit = FamilyBit::of(family);
    let at = ReadTime::at(now);
    let table = &*group.views;
    let members = table.views().iter().zip(table.account_ids());
    for (index, (published, &account_id)) in members.enumerate() {
        let candidate = |figures| candidate_of(published, account_id, figures);
        // Nearly every member: its settings need nothing of the member itself, and its
        // published view says it may take the request.
        if let Some((figures, priority)) = published.eligible(at, family_bit) {
            let in_flight = match READS_IN_FLIGHT {
                true => published.running(),
                false => 0,
            };
            if !sink.take(index, candidate((figures, priority, in_flight, None))) {
                break;
            }
            continue;
        }
        let (Some(member), Some(slot)) = (group.members.get(index), table.slot(index)) else {
            continue;
        };
        let read = read_member_the_long_way(slot, member, request, READS_IN_FLIGHT, &mut skipped);
        if let Some(read) = read {
            if !sink.take(index, candidate(read)) {
                break;
            }
        }
    }
    (sink, skipped)
}

#[inline(always)]
fn candidate_of(
    published: &PublishedView,
    account_id: relay_core::model::AccountId,
    (figures, priority, in_flight, max_concurrency): MemberFigures,
) -> Candidate {
    Candidate {
        account_id,
        priority,
        weight: published.weight(),
        // Eligible, so not disabled: the health tracker alone says the status.
        health: figures.health,
        requests_in_window: figures.requests_in_window,
        in_flight,
        success_ewma: figures.success_ewma,
        latency_ewma_ms: figures.latency_ewma_ms,
        max_concurrency,
    }
}

/// Member `index` read again as `read_candidates` reads it: a candidate, or `None` when it
/// may not take the request now.
fn read_again(
    group: &GroupRuntime,
    request: (Option<&str>, ModelFamily, UnixMillis),
    index: usize,
) -> Option<Candidate> {
    let (_, family, now) = request;
    let table = &*group.views;
    let published = table.views().get(index)?;
    let account_id = *table.account_ids().get(index)?;
    let reads_in_flight = group.strategy.reads_in_flight();
    let figures = match published.eligible(ReadTime::at(now), FamilyBit::of(family)) {
        Some((figures, priority)) => {
            let in_flight = if reads_in_flight {
                published.running()
            } else {
                0
            };
            (figures, priority, in_flight, None)
        }
        None => {
            let mut skipped = Skipped::NONE;
            let (slot, member) = (table.slot(index)?, group.members.get(index)?);
            read_member_the_long_way(slot, member, request, reads_in_flight, &mut skipped)?
        }
    };
    Some(candidate_of(published, account_id, figures))
}

/// `read_candidates` with the running count read or not, as the strategy needs it (the
/// loop is written twice so that neither carries the other's test: it is the whole cost of
/// selection in a large group).
#[inline(always)]
fn read_candidates_for<S: CandidateSink>(
    group: &GroupRuntime,
    request: (Option<&str>, ModelFamily, UnixMillis),
    sink: S,
) -> (S, Skipped) {
    match group.strategy.reads_in_flight() {
        true => read_candidates::<true, S>(group, request, sink),
        false => read_candidates::<false, S>(group, request, sink),
    }
}

/// What `plan` found for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The accounts that may take the request now (as indices into the group's members), in
    /// the strategy's preference order, with the sticky account first when it is usable.
    pub ordered: Vec<usize>,
    /// The earliest time an ineligible account becomes usable again, for `Retry-After`.
    pub earliest_return: Option<UnixMillis>,
    /// Whether every account that may not take the request is only rate limited.
    pub all_rate_limited: bool,
    /// How many accounts may take the request now (`ordered` holds at most the limit asked).
    pub eligible: usize,
    /// The group's round-robin cursor as this request took it, for [`plan_again`].
    pub cursor: u64,
}

/// Ranks the accounts of a group that may take this request now, at most `limit` of them,
/// and advances the group's round-robin cursor.
pub fn plan(
    group: &GroupRuntime,
    model: Option<&str>,
    family: ModelFamily,
    session_account: Option<i64>,
    now: UnixMillis,
    limit: usize,
) -> Plan {
    plan_with(group, (model, family, now), session_account, limit, None)
}

/// Ranks again, for a request that used up its first plan: the accounts that may take it
/// now, less those in `considered`, at most `limit` of them, from the same round-robin
/// position as the first plan (one request moves the cursor once).
pub fn plan_again(
    group: &GroupRuntime,
    request: (Option<&str>, ModelFamily, UnixMillis),
    cursor: u64,
    considered: &[usize],
    limit: usize,
) -> Vec<usize> {
    let mut ordered =
        plan_with(group, request, None, limit + considered.len(), Some(cursor)).ordered;
    ordered.retain(|member| !considered.contains(member));
    ordered.truncate(limit);
    ordered
}

fn plan_with(
    group: &GroupRuntime,
    request: (Option<&str>, ModelFamily, UnixMillis),
    session_account: Option<i64>,
    limit: usize,
    cursor: Option<u64>,
) -> Plan {
    let count = group.members.len();
    let screen = (count >= SCREENED_FROM).then(|| group.strategy.screen(limit));
    match screen.flatten() {
        // The strategy ranks candidates as they are read: none is written out.
        Some(mut screen) => with_slots(&MEMBERS, count, 0, |members| {
            if screen.needs_survey() {
                // A first read of the table for the group's figures (the members are read
                // twice: still less than writing every candidate out and reading it back).
                let (survey, _) =
                    read_candidates_for(group, request, SurveySink(Survey::default()));
                screen.begin(&survey.0);
            }
            let mut feed = ScreenFeed {
                group,
                request,
                members,
                filled: 0,
                skipped: None,
            };
            screen.offer_all(&mut feed);
            let ScreenFeed {
                members,
                filled,
                skipped,
                ..
            } = feed;
            // Every screen runs its feed once.
            let skipped = skipped.unwrap_or(Skipped::NONE);
            let members = &members[..filled];
            let rank = |context: &mut SelectionContext<'_>| {
                screen.finish(context, |candidate| {
                    let member = *members.get(candidate)?;
                    read_again(group, request, member as usize)
                })
            };
            let ranked = Ranked {
                eligible: filled,
                member_of_candidate: |candidate: usize| {
                    members.get(candidate).map(|member| *member as usize)
                },
                is_candidate: |member: usize| members.contains(&(member as u32)),
            };
            finish_plan(
                group,
                request,
                session_account,
                cursor,
                skipped,
                ranked,
                rank,
            )
        }),
        None => with_slots(&CANDIDATES, count, Candidate::new(0, 0, 0), |slots| {
            let (sink, skipped) = read_candidates_for(group, request, Written { slots, filled: 0 });
            let candidates = &sink.slots[..sink.filled];
            let rank = |context: &mut SelectionContext<'_>| {
                group.strategy.rank(candidates, context, limit)
            };
            // Members are sorted by id, so a ranked candidate's member is found by its id.
            // Candidates were taken from the members in order, skipping some: the member of
            // candidate `c` lies at `c` or at most that many places later, which is where
            // the search looks.
            let skipped_members = count - candidates.len();
            let ranked = Ranked {
                eligible: candidates.len(),
                member_of_candidate: |candidate: usize| {
                    let account_id = candidates.get(candidate)?.account_id;
                    let window = group.members.get(candidate..=candidate + skipped_members)?;
                    window
                        .binary_search_by_key(&account_id, |member| member.id)
                        .ok()
                        .map(|offset| candidate + offset)
                },
                is_candidate: |member: usize| {
                    group.members.get(member).is_some_and(|member| {
                        candidates
                            .iter()
                            .any(|candidate| candidate.account_id == member.id)
                    })
                },
            };
            finish_plan(
                group,
                request,
                session_account,
                cursor,
                skipped,
                ranked,
                rank,
            )
        }),
    }
}

/// From how many members a group's candidates are screened as they are read, when the
/// strategy can: a screen carries its kept keys by value (several hundred bytes), which
/// costs more than writing a small group's candidates out.
const SCREENED_FROM: usize = 512;

/// How `finish_plan` learns about the candidates `plan` read.
struct Ranked<M, C> {
    eligible: usize,
    /// The member of a candidate index.
    member_of_candidate: M,
    /// Whether a member is among the candidates.
    is_candidate: C,
}

/// The part of `plan` after the candidates are read: the cursor, the ranking (`rank`), the
/// picks mapped back to members, the session's account first.
fn finish_plan(
    group: &GroupRuntime,
    request: (Option<&str>, ModelFamily, UnixMillis),
    session_account: Option<i64>,
    cursor: Option<u64>,
    skipped: Skipped,
    ranked: Ranked<impl Fn(usize) -> Option<usize>, impl Fn(usize) -> bool>,
    rank: impl FnOnce(&mut SelectionContext<'_>) -> Vec<usize>,
) -> Plan {
    let Skipped {
        earliest_return,
        all_rate_limited,
    } = skipped;
    let mut plan = Plan {
        ordered: Vec::new(),
        earliest_return,
        all_rate_limited,
        eligible: ranked.eligible,
        cursor: cursor.unwrap_or(0),
    };
    if ranked.eligible == 0 {
        return plan;
    }
    plan.cursor = cursor.unwrap_or_else(|| {
        group
            .cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    });
    let mut rng = rand::thread_rng();
    let mut context = SelectionContext {
        now: request.2,
        rng: &mut rng,
        cursor: plan.cursor,
    };
    let order = rank(&mut context);
    let mut ordered: Vec<usize> = order
        .into_iter()
        .filter_map(&ranked.member_of_candidate)
        .collect();
    // The session's account goes first while it is usable (it is among the candidates).
    if let Some(sticky) = session_account {
        let sticky_member = group
            .members
            .binary_search_by_key(&sticky, |member| member.id)
            .ok();
        if let Some(position) = ordered.iter().position(|m| Some(*m) == sticky_member) {
            let bound = ordered.remove(position);
            ordered.insert(0, bound);
        } else if let Some(bound) = sticky_member.filter(|member| (ranked.is_candidate)(*member)) {
            ordered.insert(0, bound);
        }
    }
    plan.ordered = ordered;
    plan
}

/// How many accounts the first plan of a request ranks (see `forward`).
pub const FIRST_PLAN_LIMIT: usize = 2;

fn retry_after_secs(until: Option<UnixMillis>, now: UnixMillis) -> Option<u64> {
    until.map(|until| {
        u64::try_from((until - now + 999) / 1000)
            .unwrap_or(1)
            .max(1)
    })
}

/// Runs the attempt loop for one request.
pub async fn forward(
    state: &Arc<RelayState>,
    request: ForwardRequest,
) -> Result<Response, RelayError> {
    let group = Arc::clone(&request.identity.group);
    let config: Arc<FallbackConfig> = Arc::clone(&group.config);
    let lang = state.settings.log_lang;
    let now = state.now();
    let family = request
        .model
        .as_deref()
        .map(ModelFamily::of)
        .unwrap_or(ModelFamily::Other);
    let strategy_name = group.strategy.name();

    // Released on every path that does not report an outcome to the group breaker.
    let mut group_trial = TrialSlot::NONE;
    if config.enable_circuit_breaker {
        match lock(&group.breaker).admit(now) {
            Admission::Allowed => {}
            Admission::Trial => group_trial = TrialSlot::group(&group, now),
            Admission::Rejected { retry_at } => {
                record_request_metrics(state, &request, 0, false, now);
                return Err(RelayError::AllAccountsFailed {
                    kind: ErrorKind::Overloaded,
                    message: format!(
                        "group {} is failing and its circuit breaker is open; retry later",
                        group.group.name
                    ),
                    retry_after_secs: retry_after_secs(Some(retry_at), now),
                    info: Box::new(FallbackInfo {
                        attempt_count: 0,
                        strategy_used: strategy_name.to_owned(),
                        failure_reason: "circuit_open".to_owned(),
                        duration: relay_core::duration::format_seconds_one_decimal(
                            request.started.elapsed(),
                        ),
                        attempts: Vec::new(),
                    }),
                });
            }
        }
    }

    let session_account = request
        .session_key
        .as_deref()
        .and_then(|key| state.sticky.get(key, now));
    // A request considers at most this many accounts: as many as it may try, plus slack for
    // accounts that turn ineligible between the plan and their turn.
    let wanted = (config.max_retries as usize + 1) * 2 + 2;
    // The first plan ranks the account to try and a spare for when it turned ineligible
    // meanwhile: nearly every request needs no more. One that fails over plans again, from
    // the state its failures left (`plan_again`).
    let mut first = plan(
        &group,
        request.model.as_deref(),
        family,
        session_account,
        now,
        wanted.min(FIRST_PLAN_LIMIT),
    );
    let Plan {
        earliest_return,
        all_rate_limited,
        ..
    } = first;
    if first.ordered.is_empty() {
        tracing::warn!(request_id = %request.request_id, group = %group.group.name, "{}", logs::none_eligible(lang, &group.group.name));
        let (kind, message) = if all_rate_limited && earliest_return.is_some() {
            (
                ErrorKind::RateLimit,
                "every account of this group is rate-limited right now".to_owned(),
            )
        } else {
            (
                ErrorKind::Overloaded,
                "no account of this group can take the request right now".to_owned(),
            )
        };
        record_request_metrics(state, &request, 0, false, now);
        return Err(RelayError::AllAccountsFailed {
            kind,
            message,
            retry_after_secs: retry_after_secs(earliest_return, now),
            info: Box::new(FallbackInfo {
                attempt_count: 0,
                strategy_used: strategy_name.to_owned(),
                failure_reason: "no_available_account".to_owned(),
                duration: relay_core::duration::format_seconds_one_decimal(
                    request.started.elapsed(),
                ),
                attempts: Vec::new(),
            }),
        });
    }

    let max_attempts = (config.max_retries as usize + 1).min(first.eligible);
    let deadline = tokio::time::Instant::now() + config.request_timeout;
    // The opening lines of every request are at debug level: at info, a request that
    // succeeds on its first account logs one line (✅), and one that fails over logs each
    // failure, each switch and each further attempt. RUST_LOG=debug shows every step.
    tracing::debug!(
        request_id = %request.request_id,
        group = %group.group.name,
        strategy = %strategy_name,
        "{}",
        logs::start(lang, max_attempts, strategy_name)
    );

    let mut attempts: Vec<AttemptInfo> = Vec::new();
    let mut backoff_failures: u32 = 0;
    let mut last_class = OutcomeClass::ServerError;
    let mut classes_seen: Vec<OutcomeClass> = Vec::new();
    let mut retry_at: Option<UnixMillis> = None;

    // Every account taken so far, tried or skipped, then those still to take.
    let mut queue = std::mem::take(&mut first.ordered);
    let mut taken = 0;
    // The first attempt starts microseconds after the plan: it takes the plan's time instead
    // of reading the clock again.
    let mut plan_now = Some(now);
    // An account that cannot serve this route at all was passed over (see below).
    let mut unsupported_route = false;
    loop {
        if attempts.len() >= max_attempts
            || (!attempts.is_empty() && tokio::time::Instant::now() >= deadline)
        {
            break;
        }
        if taken == queue.len() {
            if queue.len() >= wanted {
                break;
            }
            let request_now = (request.model.as_deref(), family, state.now());
            let more = plan_again(
                &group,
                request_now,
                first.cursor,
                &queue,
                wanted - queue.len(),
            );
            if more.is_empty() {
                break;
            }
            queue.extend(more);
        }
        let Some(member) = queue.get(taken).and_then(|index| group.members.get(*index)) else {
            break;
        };
        taken += 1;
        let runtime = &member.runtime;
        if crate::openai::upstream_path(request.endpoint).is_none()
            && runtime.account().platform == Platform::Openai
        {
            // Chat Completions cannot count tokens: another account of the group may, and
            // this one did nothing wrong.
            unsupported_route = true;
            continue;
        }
        let now = plan_now.take().unwrap_or_else(|| state.now());
        let admission = runtime.try_admit(now, family);
        let mut trial_slot = match admission {
            Ok(Admission::Allowed) => TrialSlot::NONE,
            Ok(Admission::Trial) => TrialSlot::account(runtime, now),
            // Became ineligible since the plan (another request's failure): skip, free.
            Ok(Admission::Rejected { .. }) | Err(_) => continue,
        };
        let account = runtime.account();
        let attempt_number = attempts.len() + 1;
        let line = || {
            logs::attempt(
                lang,
                attempt_number,
                max_attempts,
                &account.name,
                account.platform.as_str(),
                account.priority,
            )
        };
        if attempt_number == 1 {
            tracing::debug!(request_id = %request.request_id, account = %account.name, attempt = attempt_number, "{}", line());
        } else {
            tracing::info!(request_id = %request.request_id, account = %account.name, attempt = attempt_number, "{}", line());
        }
        let attempt_started = Instant::now();
        let created_at = now;
        let in_flight = runtime.start_request();
        // Boxed: the attempt's future (the upstream call, its timeout) is the largest part of
        // the request's, and every layer above would otherwise carry and move it.
        let outcome = Box::pin(attempt_once(
            state, runtime, &account, &request, &config, deadline,
        ))
        .await;
        let took = attempt_started.elapsed();
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let now = state.now();
        // The outcome is recorded below, which settles a half-open trial either way.
        trial_slot.disarm();
        match outcome {
            AttemptOutcome::Committed(answer) => {
                let events = runtime.update_state(now, |account_state| {
                    account_state.record_outcome(
                        now,
                        OutcomeClass::Success,
                        duration_ms as f64,
                        family,
                        None,
                    )
                });
                log_state_events(state, &account, &events);
                group_trial.disarm();
                if config.enable_circuit_breaker {
                    let transition = lock(&group.breaker).record_success(now);
                    if transition.is_some() {
                        lock(&state.metrics).record_breaker_transition(
                            BreakerScope::Group(group.group.id),
                            BreakerPhase::Closed,
                            now,
                        );
                        state.publish_group_breaker(group.group.id);
                        tracing::info!(group = %group.group.name, "{}", logs::breaker_closed(lang, &group.group.name));
                    }
                }
                if let Some(key) = request.session_key.as_deref() {
                    if state.sticky.bind(key, runtime.id, now) {
                        state.shared().session_bound(key, runtime.id);
                    }
                }
                tracing::info!(
                    request_id = %request.request_id,
                    account = %account.name,
                    attempt = attempt_number,
                    class = "success",
                    duration_ms,
                    "{}",
                    logs::attempt_succeeded(lang, &account.name, took)
                );
                record_request_metrics(state, &request, attempt_number, true, now);
                return Ok(finish_commit(
                    state,
                    *answer,
                    &request,
                    runtime,
                    attempt_number,
                    attempt_started,
                    duration_ms,
                    created_at,
                    family,
                    in_flight,
                ));
            }
            AttemptOutcome::PassThrough(response)
            | AttemptOutcome::Refused {
                refusal: response, ..
            } => {
                let events = runtime.update_state(now, |account_state| {
                    account_state.record_outcome(
                        now,
                        OutcomeClass::ClientError,
                        duration_ms as f64,
                        family,
                        None,
                    )
                });
                log_state_events(state, &account, &events);
                record_failed_attempt(
                    state,
                    &request,
                    runtime.id,
                    attempt_number,
                    Some(response.status().as_u16()),
                    OutcomeClass::ClientError,
                    duration_ms,
                    created_at,
                );
                record_request_metrics(state, &request, attempt_number, false, now);
                return Ok(response);
            }
            AttemptOutcome::Failed(failure) => {
                drop(in_flight);
                let cooldown = match failure.class {
                    OutcomeClass::RateLimited => failure.headers.as_ref().map(|headers| {
                        rate_limit_cooldown(
                            headers,
                            family,
                            now,
                            state.settings.default_rate_limit_cooldown,
                        )
                    }),
                    _ => None,
                };
                if let Some(cooldown) = &cooldown {
                    retry_at = Some(
                        retry_at.map_or(cooldown.until, |r: UnixMillis| r.min(cooldown.until)),
                    );
                }
                let events = runtime.update_state(now, |account_state| {
                    account_state.record_outcome(
                        now,
                        failure.class,
                        duration_ms as f64,
                        family,
                        cooldown,
                    )
                });
                tracing::warn!(
                    request_id = %request.request_id,
                    account = %account.name,
                    attempt = attempt_number,
                    class = failure.class.as_str(),
                    status = failure.status,
                    duration_ms,
                    "{}",
                    logs::attempt_failed(lang, &account.name, &failure.reason)
                );
                log_state_events(state, &account, &events);
                record_failed_attempt(
                    state,
                    &request,
                    runtime.id,
                    attempt_number,
                    failure.status,
                    failure.class,
                    duration_ms,
                    created_at,
                );
                attempts.push(AttemptInfo {
                    account_id: runtime.id,
                    status: failure.status,
                    class: failure.class.as_str(),
                    duration_ms,
                });
                last_class = failure.class;
                classes_seen.push(failure.class);
                if attempts.len() < max_attempts {
                    tracing::info!(request_id = %request.request_id, "{}", logs::switching(lang));
                    if failure.class.backoff_before_next_attempt() && !config.retry_delay.is_zero()
                    {
                        backoff_failures += 1;
                        let wait = backoff(config.retry_delay, backoff_failures);
                        let wake = (tokio::time::Instant::now() + wait).min(deadline);
                        tokio::time::sleep_until(wake).await;
                    }
                }
            }
        }
    }

    if attempts.is_empty() && unsupported_route {
        let (status, body) = crate::openai::unsupported_route();
        record_request_metrics(state, &request, 0, false, state.now());
        return Ok(json_response(status, body));
    }

    // Every allowed attempt failed (or the deadline passed).
    let now = state.now();
    if config.enable_circuit_breaker && !attempts.is_empty() {
        let transition = lock(&group.breaker).record_failure(now);
        if let Some(relay_core::breaker::BreakerTransition::Opened { until, .. }) = transition {
            lock(&state.metrics).record_breaker_transition(
                BreakerScope::Group(group.group.id),
                BreakerPhase::Open,
                now,
            );
            state.publish_group_breaker(group.group.id);
            tracing::warn!(group = %group.group.name, "{}", logs::group_threshold(lang, &group.group.name, config.circuit_breaker_threshold));
            tracing::warn!(group = %group.group.name, "{}", logs::breaker_opened(lang));
            tracing::warn!(group = %group.group.name, "{}", logs::half_open_in(lang, Duration::from_millis(u64::try_from(until - now).unwrap_or(0))));
        }
        group_trial.disarm();
    }
    tracing::error!(
        request_id = %request.request_id,
        group = %group.group.name,
        attempts = attempts.len(),
        "{}",
        logs::all_failed(lang, attempts.len(), request.started.elapsed())
    );
    let every_rate_limited =
        !classes_seen.is_empty() && classes_seen.iter().all(|c| *c == OutcomeClass::RateLimited);
    let (kind, failure_reason) = if attempts.is_empty() {
        (ErrorKind::Overloaded, "no_available_account")
    } else if every_rate_limited {
        (ErrorKind::RateLimit, "all_accounts_failed")
    } else if matches!(
        last_class,
        OutcomeClass::ServerError | OutcomeClass::Network
    ) && classes_seen.iter().all(|c| *c == last_class)
    {
        (ErrorKind::Api, "all_accounts_failed")
    } else {
        (ErrorKind::Overloaded, "all_accounts_failed")
    };
    let retry_at = retry_at.or(earliest_return);
    record_request_metrics(state, &request, attempts.len(), false, now);
    Err(RelayError::AllAccountsFailed {
        kind,
        message: format!(
            "all {} attempted accounts failed; the last one: {}",
            attempts.len(),
            last_class.as_str()
        ),
        retry_after_secs: retry_after_secs(retry_at, now),
        info: Box::new(FallbackInfo {
            attempt_count: attempts.len(),
            strategy_used: strategy_name.to_owned(),
            failure_reason: failure_reason.to_owned(),
            duration: relay_core::duration::format_seconds_one_decimal(request.started.elapsed()),
            attempts,
        }),
    })
}

/// A half-open breaker admits exactly one trial. If the request is abandoned while the
/// trial runs (the client went away and the handler future was dropped), this frees the slot
/// so the account (or group) is not left waiting for a report that never comes.
struct TrialSlot {
    held: Option<HeldTrial>,
}

enum HeldTrial {
    Account(Arc<AccountRuntime>, UnixMillis),
    Group(Arc<GroupRuntime>, UnixMillis),
}

impl TrialSlot {
    const NONE: TrialSlot = TrialSlot { held: None };

    fn account(runtime: &Arc<AccountRuntime>, now: UnixMillis) -> Self {
        TrialSlot {
            held: Some(HeldTrial::Account(Arc::clone(runtime), now)),
        }
    }

    fn group(group: &Arc<GroupRuntime>, now: UnixMillis) -> Self {
        TrialSlot {
            held: Some(HeldTrial::Group(Arc::clone(group), now)),
        }
    }

    /// The outcome was reported to the breaker: nothing to release.
    fn disarm(&mut self) {
        self.held = None;
    }
}

impl Drop for TrialSlot {
    fn drop(&mut self) {
        match self.held.take() {
            None => {}
            Some(HeldTrial::Account(runtime, now)) => {
                runtime.update_state(now, |state| state.release_trial(now))
            }
            Some(HeldTrial::Group(group, now)) => lock(&group.breaker).release_trial(now),
        }
    }
}

/// `retry_delay · 2^(n-1)`, capped, with "equal jitter" (half fixed, half random) so that
/// many clients failing together do not retry in lockstep.
fn backoff(base: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(10);
    let full = base.saturating_mul(1 << exponent).min(MAX_BACKOFF);
    let half = full / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(0);
    let random = if jitter_ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=jitter_ms)
    };
    half + Duration::from_millis(random)
}

fn record_request_metrics(
    state: &RelayState,
    request: &ForwardRequest,
    attempts: usize,
    succeeded: bool,
    now: UnixMillis,
) {
    lock(&state.metrics).record_request(&RequestSample {
        group_id: request.identity.group.group.id,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        succeeded,
        latency_ms: request.started.elapsed().as_secs_f64() * 1000.0,
        at: now,
    });
}

#[allow(clippy::too_many_arguments)]
fn record_failed_attempt(
    state: &RelayState,
    request: &ForwardRequest,
    account_id: i64,
    attempt: usize,
    status: Option<u16>,
    class: OutcomeClass,
    duration_ms: u64,
    created_at: UnixMillis,
) {
    state.usage.record(UsageRow {
        request_id: Arc::clone(&request.request_id),
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        api_key_id: Some(request.identity.key.id),
        group_id: Some(request.identity.group.group.id),
        account_id: Some(account_id),
        model: request.model.clone().unwrap_or_default(),
        stream: request.stream,
        status,
        class: Cow::Borrowed(class.as_str()),
        input_tokens: 0,
        output_tokens: 0,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
        cost_usd: 0.0,
        duration_ms,
        ttfb_ms: None,
        created_at,
    });
    lock(&state.metrics).record_attempt(&AttemptSample {
        group_id: request.identity.group.group.id,
        account_id,
        class,
        status,
        latency_ms: duration_ms as f64,
        ttfb_ms: None,
        usage: Usage::default(),
        cost_usd: 0.0,
        at: created_at,
    });
}

/// Wraps a committed answer's body so it streams through and records usage at its end.
#[allow(clippy::too_many_arguments)]
fn finish_commit(
    state: &Arc<RelayState>,
    committed: CommittedAnswer,
    request: &ForwardRequest,
    runtime: &Arc<AccountRuntime>,
    attempt_number: usize,
    attempt_started: Instant,
    ttfb_ms: u64,
    created_at: UnixMillis,
    family: ModelFamily,
    in_flight: crate::registry::InFlightGuard,
) -> Response {
    let attempt = CommittedAttempt {
        state: Arc::clone(state),
        account: Arc::clone(runtime),
        key_limits: Arc::clone(&request.identity.limits),
        record: AttemptRecord {
            request_id: Arc::clone(&request.request_id),
            attempt: u32::try_from(attempt_number).unwrap_or(u32::MAX),
            api_key_id: request.identity.key.id,
            group_id: request.identity.group.group.id,
            account_id: runtime.id,
            model: request.model.clone().unwrap_or_default(),
            served_model: committed.served_model,
            stream: request.stream,
            status: committed.status.as_u16(),
            started: attempt_started,
            ttfb_ms,
            created_at,
        },
        family,
        in_flight,
    };
    let body = relay_body(
        committed.prefetched,
        committed.early_end,
        committed.upstream,
        committed.reader,
        state.settings.idle_timeout,
        attempt,
    );
    let mut response = Response::new(body);
    *response.status_mut() = committed.status;
    *response.headers_mut() = committed.headers;
    response
}

/// A 2xx upstream answer whose head has been read (and, for a stream, its first event).
struct CommittedAnswer {
    status: StatusCode,
    /// What the answer is priced as (see `AttemptRecord::served_model`).
    served_model: Option<String>,
    headers: HeaderMap,
    prefetched: Vec<Bytes>,
    early_end: Option<EarlyEnd>,
    upstream: UpstreamAnswer,
    reader: UsageReader,
}

/// One attempt on one account, with the OAuth refresh-and-retry-once on a 401.
async fn attempt_once(
    state: &Arc<RelayState>,
    runtime: &Arc<AccountRuntime>,
    account: &Account,
    request: &ForwardRequest,
    config: &FallbackConfig,
    deadline: tokio::time::Instant,
) -> AttemptOutcome {
    let secret = match oauth::account_secret(state, runtime).await {
        Ok(secret) => secret,
        Err(error) => return oauth_failure(error),
    };
    // The account's name for the model its server is asked for: what it refused is kept
    // per model (one server can serve a reasoning model and a chat model).
    let upstream_model = request
        .model
        .as_ref()
        .filter(|_| account.platform == Platform::Openai)
        .map(|model| account.model_mapping.get(model).unwrap_or(model));
    let mut adjust = ChatAdjust {
        refusals: upstream_model.map_or(Refusals::NONE, |model| runtime.refusals(model)),
        ..ChatAdjust::default()
    };
    let mut outcome = send_once(state, account, request, config, deadline, &secret, adjust).await;
    // Each adjustment is made once at most (`refused_adjustment` names only one not made
    // yet; a refusal without one is passed through), so this ends: after one more request
    // for each (the cap on `max_tokens`, and each field of `Refusals`), in practice one or two.
    while let AttemptOutcome::Refused { adjusted, refusal } = outcome {
        if adjusted == adjust {
            // Not reached (see above); never ask the same request twice.
            outcome = AttemptOutcome::PassThrough(refusal);
            break;
        }
        if let Some(model) = upstream_model.filter(|_| adjusted.refusals != adjust.refusals) {
            let learned = runtime.note_refusals(model, adjusted.refusals);
            if learned != Refusals::NONE {
                tracing::warn!(
                    account = %account.name,
                    model = %model,
                    refused = ?learned.names(),
                    "the account's server refuses these request fields for this model: they \
                     are left out of its requests from now on (max_tokens goes as \
                     max_completion_tokens; without stream_options, streams carry no token \
                     counts)"
                );
            }
        }
        adjust = adjusted;
        outcome = send_once(state, account, request, config, deadline, &secret, adjust).await;
    }
    if account.platform == Platform::Claude {
        if let AttemptOutcome::Failed(AttemptFailure {
            class: OutcomeClass::Auth,
            status: Some(401),
            ..
        }) = &outcome
        {
            // The token may have been revoked early: refresh once and retry the same account.
            // Boxed, like the refresh in `account_secret`: rare, and large.
            return match Box::pin(oauth::refresh(state, runtime, Some(&*secret))).await {
                Ok(fresh) => {
                    let adjust = ChatAdjust::default();
                    send_once(state, account, request, config, deadline, &fresh, adjust).await
                }
                Err(error) => oauth_failure(error),
            };
        }
    }
    outcome
}

fn oauth_failure(error: OAuthError) -> AttemptOutcome {
    let class = match error {
        OAuthError::Refused { .. } | OAuthError::NotOAuth => OutcomeClass::Auth,
        OAuthError::Unavailable(_) => OutcomeClass::Network,
    };
    AttemptOutcome::Failed(AttemptFailure {
        class,
        status: None,
        reason: error.to_string(),
        headers: None,
    })
}

/// The adjustment that answers an `openai` account's 400 `error_body`, when it names one not
/// made yet: the server's limit on `max_tokens`, or its refusal of `stream_options` (sent
/// with streams only).
fn refused_adjustment(adjust: ChatAdjust, sent: &[u8], error_body: &[u8]) -> Option<ChatAdjust> {
    if adjust.max_tokens_cap.is_none() {
        if let Some(limit) = relay_core::openai::max_tokens_limit(error_body) {
            return Some(ChatAdjust {
                max_tokens_cap: Some(limit),
                ..adjust
            });
        }
    }
    let sent: serde_json::Value = serde_json::from_slice(sent).ok()?;
    let refused = relay_core::openai::refusal_in(error_body, &sent, adjust.refusals)?;
    Some(ChatAdjust {
        refusals: adjust.refusals.with(refused),
        ..adjust
    })
}

/// One request to `account`'s upstream. The account is the attempt's copy of it (read
/// once per attempt: each read of an account that may be replaced costs atomic operations).
async fn send_once(
    state: &Arc<RelayState>,
    account: &Account,
    request: &ForwardRequest,
    config: &FallbackConfig,
    deadline: tokio::time::Instant,
    secret: &str,
    adjust: ChatAdjust,
) -> AttemptOutcome {
    let client = match state.clients.client_for(account.proxy_url.as_deref()) {
        Ok(client) => client,
        Err(error) => return AttemptOutcome::Failed(AttemptFailure::network(error.to_string())),
    };
    let openai = account.platform == Platform::Openai;
    let client_model = request.model.as_deref().unwrap_or_default();
    let path = if openai {
        match crate::openai::upstream_path(request.endpoint) {
            Some(path) => path,
            None => {
                let (status, body) = crate::openai::unsupported_route();
                return AttemptOutcome::PassThrough(json_response(status, body));
            }
        }
    } else {
        request.endpoint.path()
    };
    // The account's name for the model, when its `model_mapping` renames it.
    let mapped_model = request
        .model
        .as_ref()
        .and_then(|model| account.model_mapping.get(model));
    let body = match (&request.model, request.endpoint) {
        (Some(model), Endpoint::Messages) if openai => {
            let upstream_model = mapped_model.unwrap_or(model);
            match crate::openai::chat_request_body(
                &request.body,
                upstream_model,
                adjust.max_tokens_cap,
                adjust.refusals,
            ) {
                Ok(body) => body,
                Err(message) => {
                    let (status, body) = crate::openai::invalid_request(&message);
                    return AttemptOutcome::PassThrough(json_response(status, body));
                }
            }
        }
        (Some(_), Endpoint::Messages | Endpoint::CountTokens) => match mapped_model {
            Some(mapped) => match relay_core::body::rewrite_model(&request.body, mapped) {
                Ok(body) => body,
                Err(_) => request.body.clone(),
            },
            None => request.body.clone(),
        },
        _ => request.body.clone(),
    };
    // What an `openai` account was asked, to read its refusal against.
    let sent_body = openai.then(|| body.clone());
    let mut upstream_request = http::Request::new(if request.endpoint.method() == Method::POST {
        UpstreamBody::new(body)
    } else {
        UpstreamBody::default()
    });
    *upstream_request.method_mut() = request.endpoint.method();
    // Claude Code's `?beta=true` means nothing to an OpenAI-compatible server.
    let query = if openai {
        None
    } else {
        request.query.as_deref()
    };
    *upstream_request.uri_mut() = match upstream_uri(&account.base_url, path, query) {
        Ok(uri) => uri,
        Err(reason) => return AttemptOutcome::Failed(AttemptFailure::network(reason)),
    };
    *upstream_request.headers_mut() = account_headers(&request.headers, account, secret);
    let forwarded = Forwarded::new(&request.headers, account);
    let header_wait = if request.stream {
        config.first_byte_timeout
    } else {
        config.request_timeout
    };
    let header_deadline = (tokio::time::Instant::now() + header_wait).min(deadline);
    let response = match tokio::time::timeout_at(
        header_deadline,
        client.send_forwarding(upstream_request, Some(forwarded)),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return AttemptOutcome::Failed(AttemptFailure::network(format!(
                "upstream unreachable: {error}"
            )))
        }
        Err(_) => {
            return AttemptOutcome::Failed(AttemptFailure::network(format!(
                "no answer within {}",
                relay_core::duration::format_duration(header_wait)
            )))
        }
    };
    let (head, mut response) = response.into_parts();
    let status = head.status;
    let upstream_headers_map = head.headers;

    if !status.is_success() {
        let error_body = read_error_body(&mut response, state.settings.idle_timeout).await;
        let class = classify_response(status.as_u16(), &error_body);
        if class == OutcomeClass::ClientError || !class.fails_over() {
            if openai {
                let refusal = json_response(status, crate::openai::error_body(status, &error_body));
                let adjusted = if status == StatusCode::BAD_REQUEST
                    && request.endpoint == Endpoint::Messages
                {
                    refused_adjustment(
                        adjust,
                        sent_body.as_deref().unwrap_or_default(),
                        &error_body,
                    )
                } else {
                    None
                };
                return match adjusted {
                    Some(adjusted) => AttemptOutcome::Refused { adjusted, refusal },
                    None => AttemptOutcome::PassThrough(refusal),
                };
            }
            return AttemptOutcome::PassThrough(plain_response(
                status,
                upstream_headers_map,
                error_body,
            ));
        }
        let reason = format!("HTTP {}: {}", status.as_u16(), error_summary(&error_body));
        return AttemptOutcome::Failed(AttemptFailure {
            class,
            status: Some(status.as_u16()),
            reason,
            headers: Some(upstream_headers_map),
        });
    }

    let is_sse = upstream_headers_map
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut prefetched = Vec::new();
    let mut early_end = None;
    if openai && is_sse {
        response.transform_with(crate::openai::StreamTransform::new(client_model));
    }
    // A server that answered a stream request with one JSON answer: the client still gets
    // a stream.
    let events_from_json =
        openai && !is_sse && request.stream && request.endpoint == Endpoint::Messages;
    let reader = if openai && !is_sse {
        let translated = crate::openai::translate_json_answer(
            request.endpoint,
            &mut response,
            state.settings.idle_timeout,
            client_model,
            events_from_json,
        )
        .await;
        match translated {
            Ok(body) => {
                prefetched.push(body.clone());
                early_end = Some(EarlyEnd::Ended);
                match request.endpoint {
                    Endpoint::Messages if events_from_json => {
                        let mut parser = SseUsageParser::new();
                        parser.feed(&body);
                        UsageReader::Sse(parser)
                    }
                    Endpoint::Messages => UsageReader::Json(body.to_vec()),
                    _ => UsageReader::None,
                }
            }
            Err(reason) => {
                return AttemptOutcome::Failed(AttemptFailure {
                    class: OutcomeClass::ServerError,
                    status: Some(status.as_u16()),
                    reason,
                    headers: None,
                })
            }
        }
    } else if is_sse {
        // Hold the stream until its first event: an `event: error` there can still fail over.
        let mut parser = SseUsageParser::new();
        let first_event_deadline =
            (tokio::time::Instant::now() + config.first_byte_timeout).min(deadline);
        loop {
            if parser.first_event().is_some() {
                break;
            }
            match tokio::time::timeout_at(first_event_deadline, next_chunk(&mut response)).await {
                Ok(Ok(Some(chunk))) => {
                    parser.feed(&chunk);
                    prefetched.push(chunk);
                }
                Ok(Ok(None)) => {
                    return AttemptOutcome::Failed(AttemptFailure {
                        class: OutcomeClass::ServerError,
                        status: Some(status.as_u16()),
                        reason: "upstream closed the stream before its first event".to_owned(),
                        headers: None,
                    })
                }
                Ok(Err(error)) => {
                    return AttemptOutcome::Failed(AttemptFailure::network(format!(
                        "stream failed before its first event: {}",
                        crate::http_clients::error_chain(&error)
                    )))
                }
                Err(_) => {
                    return AttemptOutcome::Failed(AttemptFailure::network(format!(
                        "no stream event within {}",
                        relay_core::duration::format_duration(config.first_byte_timeout)
                    )))
                }
            }
        }
        if let Some(FirstEvent::Error {
            error_type,
            message,
        }) = parser.first_event()
        {
            let class = classify_stream_error_event(error_type);
            if class.fails_over() {
                return AttemptOutcome::Failed(AttemptFailure {
                    class,
                    status: Some(status.as_u16()),
                    reason: format!("stream began with event: error ({error_type}): {message}"),
                    headers: Some(upstream_headers_map),
                });
            }
        }
        early_end = gather_received(&mut response, &mut parser, &mut prefetched).await;
        UsageReader::Sse(parser)
    } else if request.endpoint == Endpoint::Messages {
        UsageReader::Json(Vec::new())
    } else {
        UsageReader::None
    };

    let mut headers = client_headers(upstream_headers_map);
    if events_from_json {
        headers.insert(
            http::header::CONTENT_TYPE,
            crate::openai::event_stream_content_type(),
        );
    } else if openai && !is_sse {
        headers.insert(
            http::header::CONTENT_TYPE,
            crate::openai::json_content_type(),
        );
    }
    if let Ok(value) = HeaderValue::from_str(&request.request_id) {
        headers.insert("x-relay-request-id", value);
    }
    AttemptOutcome::Committed(Box::new(CommittedAnswer {
        status,
        served_model: mapped_model.cloned(),
        headers,
        prefetched,
        early_end,
        upstream: response,
        reader,
    }))
}

/// The next data chunk of an upstream body (trailers skipped); `None` at its end.
pub(crate) async fn next_chunk(
    body: &mut UpstreamAnswer,
) -> Result<Option<Bytes>, crate::h1::H1Error> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame?.into_data() {
            return Ok(Some(chunk));
        }
    }
    Ok(None)
}

async fn read_error_body(response: &mut UpstreamAnswer, idle: Duration) -> Bytes {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match tokio::time::timeout(idle, next_chunk(response)).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    Bytes::from(body)
}

fn error_summary(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_envelope = parsed.as_ref().and_then(|v| {
        let error = v.get("error")?;
        let kind = error.get("type")?.as_str()?;
        let message = error.get("message").and_then(|m| m.as_str()).unwrap_or("");
        Some(format!("{kind}: {message}"))
    });
    from_envelope.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        if text.is_empty() {
            "(empty body)".to_owned()
        } else {
            text
        }
    })
}

/// An answer of the relay's own making (an Anthropic envelope) for one attempt.
fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        crate::openai::json_content_type(),
    );
    response
}

fn plain_response(status: StatusCode, upstream: HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = client_headers(upstream);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, RegistrySource};
    use relay_core::model::{Credential, Group};
    use relay_core::strategy::StrategyRegistry;

    const NOW: UnixMillis = 1_800_000_000_000;

    /// A group of `count` accounts under `strategy` (ids 1.., priority falling with the id,
    /// so priority_first prefers the reverse of the members' order); those in `disabled` are
    /// switched off by their settings.
    fn source(strategy: &str, count: i64, disabled: &[i64]) -> RegistrySource {
        let group = Group {
            id: 1,
            name: "g".to_owned(),
            fallback: serde_json::json!({ "strategy": strategy }),
            created_at: NOW,
            updated_at: NOW,
        };
        let accounts = (1..=count)
            .map(|id| {
                let account = Account {
                    id,
                    name: format!("a{id}"),
                    platform: Platform::ClaudeConsole,
                    base_url: "http://127.0.0.1:1".to_owned(),
                    group_id: 1,
                    priority: i32::try_from(1000 - id).unwrap(),
                    weight: 1,
                    enabled: !disabled.contains(&id),
                    proxy_url: None,
                    model_allowlist: Vec::new(),
                    model_mapping: Default::default(),
                    max_concurrency: None,
                    created_at: NOW,
                    updated_at: NOW,
                };
                (account, Credential::ApiKey(format!("sk-{id}")))
            })
            .collect();
        RegistrySource {
            groups: vec![group],
            accounts,
            keys: Vec::new(),
        }
    }

    fn rebuild(registry: &Registry, source: RegistrySource) -> Arc<GroupRuntime> {
        rebuild_with(registry, source, &StrategyRegistry::with_builtin())
    }

    fn rebuild_with(
        registry: &Registry,
        source: RegistrySource,
        strategies: &StrategyRegistry,
    ) -> Arc<GroupRuntime> {
        registry.rebuild(source, &FallbackConfig::default(), strategies);
        Arc::clone(&registry.load_full().groups[&1])
    }

    /// A built-in strategy that only ranks whole lists (it has no screen), to compare with.
    #[derive(Debug)]
    struct WholeList(Arc<dyn relay_core::strategy::SelectionStrategy>);

    impl relay_core::strategy::SelectionStrategy for WholeList {
        fn name(&self) -> &str {
            "whole_list"
        }

        fn rank(
            &self,
            candidates: &[Candidate],
            ctx: &mut SelectionContext<'_>,
            limit: usize,
        ) -> Vec<usize> {
            self.0.rank(candidates, ctx, limit)
        }

        fn reads_in_flight(&self) -> bool {
            self.0.reads_in_flight()
        }
    }

    #[test]
    fn a_screened_plan_names_the_accounts_a_written_out_one_names() {
        for name in ["priority_first", "least_used", "round_robin", "hybrid"] {
            let builtin = StrategyRegistry::with_builtin();
            let mut strategies = StrategyRegistry::with_builtin();
            strategies.register(Arc::new(WholeList(builtin.get(name).unwrap())));
            assert!(builtin.get(name).unwrap().screen(2).is_some());
            // The same accounts twice (enough to be screened): some disabled, some cooling
            // down, each with its own history, under the strategy and its whole-list twin.
            const COUNT: i64 = SCREENED_FROM as i64 + 88;
            let disabled = [3, 17, 18, 33, 400];
            let groups = [name, "whole_list"].map(|strategy| {
                let mut source = source(strategy, COUNT, &disabled);
                for (account, _) in &mut source.accounts {
                    account.priority = i32::try_from(account.id % 4).unwrap();
                }
                let group = rebuild_with(&Registry::default(), source, &strategies);
                for member in &group.members {
                    let id = member.id;
                    let outcomes = id * 7 % 5;
                    for k in 0..outcomes {
                        let class = if id % 9 == 0 {
                            OutcomeClass::RateLimited
                        } else {
                            OutcomeClass::Success
                        };
                        member.runtime.update_state(NOW + k, |state| {
                            state.record_outcome(
                                NOW + k,
                                class,
                                100.0 + id as f64,
                                ModelFamily::Sonnet,
                                None,
                            )
                        });
                    }
                }
                group
            });
            for limit in 1..=12 {
                for session in [None, Some(5), Some(9), Some(3)] {
                    let plans = groups.each_ref().map(|group| {
                        plan(group, None, ModelFamily::Sonnet, session, NOW + 10, limit)
                    });
                    let ids = |group: &GroupRuntime, plan: &Plan| -> Vec<i64> {
                        plan.ordered.iter().map(|m| group.members[*m].id).collect()
                    };
                    assert_eq!(
                        ids(&groups[0], &plans[0]),
                        ids(&groups[1], &plans[1]),
                        "{name}, limit {limit}, session {session:?}"
                    );
                    assert_eq!(plans[0].eligible, plans[1].eligible);
                    assert_eq!(plans[0].earliest_return, plans[1].earliest_return);
                    assert_eq!(plans[0].all_rate_limited, plans[1].all_rate_limited);
                    let enabled = usize::try_from(COUNT).unwrap() - disabled.len();
                    assert!(plans[0].eligible < enabled, "some are cooling down");
                }
            }
        }
    }

    /// A priority_first group (see [`source`]) whose accounts in `cooling` had a 429.
    #[test]
    fn a_surveyed_plan_ranks_a_large_group_by_its_cost() {
        // smart_load_balance over a group large enough to be screened: one account answers
        // far faster than the others, some are disabled, one has no latency yet (it borrows
        // the group's mean). The cheapest account is the first or the spare of every plan,
        // whichever two accounts the random picks compare.
        const COUNT: i64 = SCREENED_FROM as i64 + 40;
        let group = rebuild(
            &Registry::default(),
            source("smart_load_balance", COUNT, &[2, 7, 300]),
        );
        for member in &group.members {
            let latency_ms = match member.id {
                77 => 5.0,
                _ => 500.0 + member.id as f64,
            };
            if member.id != 9 {
                member.runtime.update_state(NOW, |state| {
                    state.record_outcome(
                        NOW,
                        OutcomeClass::Success,
                        latency_ms,
                        ModelFamily::Sonnet,
                        None,
                    )
                });
            }
        }
        for _ in 0..50 {
            let plan = plan(&group, None, ModelFamily::Sonnet, None, NOW + 10, 2);
            let ids: Vec<i64> = plan.ordered.iter().map(|m| group.members[*m].id).collect();
            assert_eq!(plan.eligible, COUNT as usize - 3);
            assert_eq!(ids.len(), 2);
            assert_ne!(ids[0], ids[1]);
            assert!(ids.contains(&77), "{ids:?}");
            assert!(ids.iter().all(|id| ![2, 7, 300].contains(id)), "{ids:?}");
        }
    }

    fn group_with_gaps(count: i64, disabled: &[i64], cooling: &[i64]) -> Arc<GroupRuntime> {
        let registry = Registry::default();
        let group = rebuild(&registry, source("priority_first", count, disabled));
        for member in &group.members {
            if cooling.contains(&member.id) {
                member.runtime.update_state(NOW, |state| {
                    state.record_outcome(
                        NOW,
                        OutcomeClass::RateLimited,
                        0.0,
                        ModelFamily::Sonnet,
                        None,
                    )
                });
            }
        }
        group
    }

    #[test]
    fn selection_ranks_by_the_running_count_kept_in_the_table_across_a_rebuild() {
        let registry = Registry::default();
        let group = rebuild(&registry, source("smart_load_balance", 3, &[]));
        let runtime =
            |group: &GroupRuntime, index: usize| Arc::clone(&group.members[index].runtime);
        // a1 runs nine requests, a3 three, a2 none: every cost differs, so whichever two
        // accounts the power of two choices draws, the busiest one comes last.
        let mut running: Vec<_> = (0..9).map(|_| runtime(&group, 0).start_request()).collect();
        running.extend((0..3).map(|_| runtime(&group, 2).start_request()));
        let last = |group: &GroupRuntime| {
            let ranked = plan(group, None, ModelFamily::Sonnet, None, NOW, 10).ordered;
            assert_eq!(ranked.len(), 3);
            group.members[ranked[2]].id
        };
        let counts = |group: &GroupRuntime| -> Vec<u32> {
            group
                .views
                .views()
                .iter()
                .map(|view| view.running())
                .collect()
        };
        assert_eq!(counts(&group), [9, 0, 3]);
        for _ in 0..20 {
            assert_eq!(last(&group), 1);
        }
        // An admin change rebuilds the table: the requests still running are counted there.
        let rebuilt = rebuild(&registry, source("smart_load_balance", 3, &[]));
        assert!(!Arc::ptr_eq(&rebuilt.views, &group.views));
        assert_eq!(counts(&rebuilt), [9, 0, 3]);
        for _ in 0..20 {
            assert_eq!(last(&rebuilt), 1);
        }
        // They end under the new table; the account's own count ends with them.
        running.drain(..9);
        assert_eq!(counts(&rebuilt), [0, 0, 3]);
        assert_eq!(
            runtime(&rebuilt, 0)
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        for _ in 0..20 {
            assert_eq!(last(&rebuilt), 3);
        }
        drop(running);
        assert_eq!(counts(&rebuilt), [0, 0, 0]);
    }

    #[test]
    fn the_plan_names_the_ranked_accounts_around_ineligible_ones() {
        let disabled = [2, 3, 9, 10];
        let cooling = [1, 5, 6, 12];
        let group = group_with_gaps(12, &disabled, &cooling);
        let ids = |session: Option<i64>| {
            let Plan {
                ordered: members,
                earliest_return,
                ..
            } = plan(&group, None, ModelFamily::Sonnet, session, NOW + 1, 20);
            assert!(earliest_return.is_some_and(|at| at > NOW));
            members
                .into_iter()
                .map(|member| group.members[member].id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(None), [11, 8, 7, 4]);
        // The session's account goes first while it is usable, and only then.
        assert_eq!(ids(Some(4)), [4, 11, 8, 7]);
        assert_eq!(ids(Some(5)), [11, 8, 7, 4]);
        // Nothing skipped: every account, in priority order.
        let group = group_with_gaps(5, &[], &[]);
        let members = plan(&group, None, ModelFamily::Sonnet, None, NOW, 10).ordered;
        assert_eq!(members, [4, 3, 2, 1, 0]);
    }

    #[test]
    fn planning_again_leaves_out_the_accounts_taken_and_keeps_the_round_robin_position() {
        let group = group_with_gaps(8, &[2], &[5]);
        let request = (None, ModelFamily::Sonnet, NOW + 1);
        let ids = |members: &[usize]| -> Vec<i64> {
            members
                .iter()
                .map(|member| group.members[*member].id)
                .collect()
        };
        // priority_first: 8, 7, 6, 4, 3, 1 may take it (2 is disabled, 5 cooling down).
        let first = plan(&group, None, ModelFamily::Sonnet, None, NOW + 1, 2);
        assert_eq!(ids(&first.ordered), [8, 7]);
        assert_eq!(first.eligible, 6);
        let again = plan_again(&group, request, first.cursor, &first.ordered, 3);
        assert_eq!(ids(&again), [6, 4, 3]);
        let taken: Vec<usize> = first.ordered.iter().chain(&again).copied().collect();
        let rest = plan_again(&group, request, first.cursor, &taken, 10);
        assert_eq!(ids(&rest), [1]);
        let all: Vec<usize> = taken.iter().chain(&rest).copied().collect();
        assert!(plan_again(&group, request, first.cursor, &all, 10).is_empty());

        // round_robin: planning again starts where the request's first plan did, and does
        // not move the group's cursor.
        let registry = Registry::default();
        let group = rebuild(&registry, source("round_robin", 5, &[]));
        let first = plan(&group, None, ModelFamily::Sonnet, None, NOW, 2);
        let cursor_after_first = group.cursor.load(std::sync::atomic::Ordering::Relaxed);
        let again = plan_again(&group, request, first.cursor, &first.ordered, 3);
        let whole: Vec<usize> = first.ordered.iter().chain(&again).copied().collect();
        let start = first.ordered[0];
        assert_eq!(whole, (0..5).map(|k| (start + k) % 5).collect::<Vec<_>>());
        assert_eq!(
            group.cursor.load(std::sync::atomic::Ordering::Relaxed),
            cursor_after_first
        );
    }

    #[test]
    fn backoff_doubles_with_equal_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        for failures in 1..=4u32 {
            let full = base * (1 << (failures - 1));
            for _ in 0..200 {
                let wait = backoff(base, failures);
                assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?}");
            }
        }
        for _ in 0..200 {
            assert!(backoff(base, 30) <= MAX_BACKOFF);
        }
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
        // The jitter really varies.
        let samples: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff(base, 3)).collect();
        assert!(samples.len() > 10);
    }
}
