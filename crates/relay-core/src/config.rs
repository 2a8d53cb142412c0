//! The fallback configuration (PRODUCT.md §6, §7): defaults, environment overlay, partial
//! patches and validation.
//!
//! Configuration is read in two stages. A [`FallbackConfigPatch`] is the raw, partial form —
//! the `[fallback]` table of the TOML file, a group's overrides, the body of
//! `PUT /api/v1/admin/fallback/config` — where every field is optional and unknown fields are
//! refused. A [`FallbackConfig`] is the validated, complete form the attempt loop reads. The
//! layers are: [`FallbackConfig::default`] (the seed's defaults), then the file's patch, then
//! the `FALLBACK_*` environment variables, then a group's own patch.
//!
//! Every error names what the operator wrote: the variable for the environment
//! (`FALLBACK_MAX_RETRIES=42 is out of range: must be an integer between 0 and 10`), the field
//! for patches (`max_retries: 42 is out of range (0..=10)`), so that the relay never starts
//! half-configured and an admin PUT changes nothing when one value is wrong.
//!
//! The environment is read through [`EnvSource`] so tests pass a map instead of mutating the
//! process environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Serialize};

use crate::duration::{format_duration, parse_duration, serde_human, serde_human_option};

/// Where configuration variables come from. The process environment in production, a map in
/// tests.
pub trait EnvSource {
    fn get(&self, name: &str) -> Option<String>;
}

/// Reads `std::env::var`. Variables that are not valid Unicode count as unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

/// The seven strategies of the seed. The registry of strategies lives in `strategy`; config
/// validation takes a predicate so that custom strategies registered there are accepted too.
pub const BUILTIN_STRATEGIES: [&str; 7] = [
    "priority_first",
    "weighted",
    "round_robin",
    "least_used",
    "hybrid",
    "adaptive",
    "smart_load_balance",
];

/// The complete, validated fallback configuration. Durations serialise as human strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FallbackConfig {
    /// How many further accounts may be tried after the first. Seed default 3, range 0..=10.
    pub max_retries: u32,
    /// Backoff base before the next attempt after overloaded, server and network errors.
    /// Default 1s, range 0s..=5m.
    #[serde(with = "serde_human")]
    pub retry_delay: Duration,
    /// The selection strategy's registered name. Default `priority_first`.
    pub strategy: String,
    /// Whether account and group breakers open. Default true.
    pub enable_circuit_breaker: bool,
    /// Consecutive failures that open a breaker. Default 5, range 1..=100.
    pub circuit_breaker_threshold: u32,
    /// The sliding window over which error rates are computed. Default 5m, range 1m..=24h.
    #[serde(with = "serde_human")]
    pub failure_window: Duration,
    /// The longest breaker cooldown, and the group breaker's open time. Default 10m, range
    /// 1m..=24h.
    #[serde(with = "serde_human")]
    pub recovery_window: Duration,
    /// Whether disabled accounts are probed back. Default true.
    pub enable_health_check: bool,
    /// Time between recovery probes. Default 2m, range 1m..=1h.
    #[serde(with = "serde_human")]
    pub health_check_interval: Duration,
    /// Streams: the wait for the upstream's first SSE event before failing over. Default 60s,
    /// range 1s..=10m.
    #[serde(with = "serde_human")]
    pub first_byte_timeout: Duration,
    /// Non-stream requests: the wait for the whole answer. Default 10m, range 1s..=1h.
    #[serde(with = "serde_human")]
    pub request_timeout: Duration,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            max_retries: 3,
            retry_delay: Duration::from_secs(1),
            strategy: "priority_first".to_string(),
            enable_circuit_breaker: true,
            circuit_breaker_threshold: 5,
            failure_window: Duration::from_secs(5 * 60),
            recovery_window: Duration::from_secs(10 * 60),
            enable_health_check: true,
            health_check_interval: Duration::from_secs(2 * 60),
            first_byte_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// One setting of the fallback configuration, with its JSON/TOML name, its environment
/// variable and its allowed values: the single table every reader and validator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackField {
    MaxRetries,
    RetryDelay,
    Strategy,
    EnableCircuitBreaker,
    CircuitBreakerThreshold,
    FailureWindow,
    RecoveryWindow,
    EnableHealthCheck,
    HealthCheckInterval,
    FirstByteTimeout,
    RequestTimeout,
}

/// The allowed values of one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldRule {
    Count { min: u32, max: u32 },
    Duration { min: Duration, max: Duration },
    Flag,
    StrategyName,
}

const fn minutes(count: u64) -> Duration {
    Duration::from_secs(count * 60)
}

impl FallbackField {
    pub const ALL: [FallbackField; 11] = [
        FallbackField::MaxRetries,
        FallbackField::RetryDelay,
        FallbackField::Strategy,
        FallbackField::EnableCircuitBreaker,
        FallbackField::CircuitBreakerThreshold,
        FallbackField::FailureWindow,
        FallbackField::RecoveryWindow,
        FallbackField::EnableHealthCheck,
        FallbackField::HealthCheckInterval,
        FallbackField::FirstByteTimeout,
        FallbackField::RequestTimeout,
    ];

    /// The names accepted in patches, for "unknown field" messages.
    pub const NAMES: [&'static str; 11] = [
        "max_retries",
        "retry_delay",
        "strategy",
        "enable_circuit_breaker",
        "circuit_breaker_threshold",
        "failure_window",
        "recovery_window",
        "enable_health_check",
        "health_check_interval",
        "first_byte_timeout",
        "request_timeout",
    ];

    /// The field's name in JSON, TOML and the admin API.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The environment variable that overrides the field.
    pub fn env_var(self) -> &'static str {
        match self {
            FallbackField::MaxRetries => "FALLBACK_MAX_RETRIES",
            FallbackField::RetryDelay => "FALLBACK_RETRY_DELAY",
            FallbackField::Strategy => "FALLBACK_STRATEGY",
            FallbackField::EnableCircuitBreaker => "FALLBACK_ENABLE_CIRCUIT_BREAKER",
            FallbackField::CircuitBreakerThreshold => "FALLBACK_CIRCUIT_BREAKER_THRESHOLD",
            FallbackField::FailureWindow => "FALLBACK_FAILURE_WINDOW",
            FallbackField::RecoveryWindow => "FALLBACK_RECOVERY_WINDOW",
            FallbackField::EnableHealthCheck => "FALLBACK_ENABLE_HEALTH_CHECK",
            FallbackField::HealthCheckInterval => "FALLBACK_HEALTH_CHECK_INTERVAL",
            FallbackField::FirstByteTimeout => "FALLBACK_FIRST_BYTE_TIMEOUT",
            FallbackField::RequestTimeout => "FALLBACK_REQUEST_TIMEOUT",
        }
    }

    pub fn parse(name: &str) -> Option<FallbackField> {
        FallbackField::ALL
            .into_iter()
            .find(|field| field.name() == name)
    }

    fn rule(self) -> FieldRule {
        match self {
            FallbackField::MaxRetries => FieldRule::Count { min: 0, max: 10 },
            FallbackField::CircuitBreakerThreshold => FieldRule::Count { min: 1, max: 100 },
            FallbackField::RetryDelay => FieldRule::Duration {
                min: Duration::ZERO,
                max: minutes(5),
            },
            FallbackField::FailureWindow | FallbackField::RecoveryWindow => FieldRule::Duration {
                min: minutes(1),
                max: minutes(24 * 60),
            },
            FallbackField::HealthCheckInterval => FieldRule::Duration {
                min: minutes(1),
                max: minutes(60),
            },
            FallbackField::FirstByteTimeout => FieldRule::Duration {
                min: Duration::from_secs(1),
                max: minutes(10),
            },
            FallbackField::RequestTimeout => FieldRule::Duration {
                min: Duration::from_secs(1),
                max: minutes(60),
            },
            FallbackField::Strategy => FieldRule::StrategyName,
            FallbackField::EnableCircuitBreaker | FallbackField::EnableHealthCheck => {
                FieldRule::Flag
            }
        }
    }
}

/// Where the offending value was written, which decides how the error reads by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// A `FALLBACK_*` environment variable.
    Env,
    /// A field of a patch (TOML, admin JSON, group overrides) or of a whole config.
    Field,
}

/// What was wrong with the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// The value has the right type but lies outside the field's allowed range.
    OutOfRange,
    /// The value has the wrong type or does not parse.
    Invalid {
        /// In words: "a duration like \"1s\" between 0s and 5m".
        expected: String,
    },
    /// The strategy name is not registered.
    UnknownStrategy,
    /// A patch named a field the configuration does not have.
    UnknownField,
    /// A patch was not a JSON object.
    NotAnObject,
}

/// A refused configuration value. `Display` reads in the language of where the value came
/// from; [`ConfigError::for_env`] and [`ConfigError::for_field`] give either form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct ConfigError {
    /// The field name, such as `max_retries` (empty for [`ConfigProblem::NotAnObject`]).
    pub field: String,
    /// The environment variable, such as `FALLBACK_MAX_RETRIES` (empty for unknown fields).
    pub variable: String,
    /// The offending value as written: raw text for the environment, JSON-like for patches.
    pub value: String,
    pub problem: ConfigProblem,
    pub origin: ConfigOrigin,
}

impl ConfigError {
    fn new(
        field: FallbackField,
        value: String,
        problem: ConfigProblem,
        origin: ConfigOrigin,
    ) -> Self {
        ConfigError {
            field: field.name().to_string(),
            variable: field.env_var().to_string(),
            value,
            problem,
            origin,
        }
    }

    /// The allowed values in words ("an integer between 0 and 10") and as a range
    /// ("0..=10"), from the field's rule.
    fn allowed_values(&self) -> (String, String) {
        match FallbackField::parse(&self.field) {
            Some(field) => expected_text(field.rule()),
            None => ("a valid value".to_string(), "valid values".to_string()),
        }
    }

    /// The message for the origin the value came from.
    pub fn message(&self) -> String {
        match self.origin {
            ConfigOrigin::Env => self.for_env(),
            ConfigOrigin::Field => self.for_field(),
        }
    }

    /// `FALLBACK_MAX_RETRIES=42 is out of range: must be an integer between 0 and 10`.
    pub fn for_env(&self) -> String {
        let Self {
            variable, value, ..
        } = self;
        match &self.problem {
            ConfigProblem::OutOfRange => {
                let (expected, _) = self.allowed_values();
                format!("{variable}={value} is out of range: must be {expected}")
            }
            ConfigProblem::Invalid { expected } => {
                format!("{variable}={value} is invalid: must be {expected}")
            }
            ConfigProblem::UnknownStrategy => {
                format!(
                    "{variable}={value} is not a known strategy: must be {KNOWN_STRATEGIES_TEXT}"
                )
            }
            ConfigProblem::UnknownField | ConfigProblem::NotAnObject => self.for_field(),
        }
    }

    /// `max_retries: 42 is out of range (0..=10)`.
    pub fn for_field(&self) -> String {
        let Self { field, value, .. } = self;
        match &self.problem {
            ConfigProblem::OutOfRange => {
                let (_, range) = self.allowed_values();
                format!("{field}: {value} is out of range ({range})")
            }
            ConfigProblem::Invalid { expected } => {
                format!("{field}: {value} is invalid: must be {expected}")
            }
            ConfigProblem::UnknownStrategy => {
                format!("{field}: {value} is not a known strategy: must be {KNOWN_STRATEGIES_TEXT}")
            }
            ConfigProblem::UnknownField => format!(
                "{field}: unknown field, expected one of {}",
                FallbackField::NAMES.join(", ")
            ),
            ConfigProblem::NotAnObject => {
                format!("the fallback configuration must be a JSON object, got {value}")
            }
        }
    }
}

const KNOWN_STRATEGIES_TEXT: &str = "one of priority_first, weighted, round_robin, least_used, \
hybrid, adaptive, smart_load_balance, or a registered custom strategy";

/// A partial configuration: the body of `PUT /api/v1/admin/fallback/config`, a group's
/// overrides, and the `[fallback]` table of the TOML file. Unknown fields are refused.
///
/// `Deserialize` is written by hand rather than derived so that a wrong type or range names
/// the field (`max_retries: "3" is invalid: must be an integer between 0 and 10`); serde's
/// derived messages say only "invalid type: string, expected u32". `null` counts as absent.
/// Ranges are checked while reading; the strategy name is checked when the patch is applied,
/// because the strategy registry lives elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FallbackConfigPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(with = "serde_human_option", skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_circuit_breaker: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker_threshold: Option<u32>,
    #[serde(with = "serde_human_option", skip_serializing_if = "Option::is_none")]
    pub failure_window: Option<Duration>,
    #[serde(with = "serde_human_option", skip_serializing_if = "Option::is_none")]
    pub recovery_window: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_health_check: Option<bool>,
    #[serde(with = "serde_human_option", skip_serializing_if = "Option::is_none")]
    pub health_check_interval: Option<Duration>,
    #[serde(with = "serde_human_option", skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<Duration>,
    #[serde(with = "serde_human_option", skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
}

/// One field's value, typed.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    Count(u32),
    Duration(Duration),
    Flag(bool),
    Strategy(String),
}

impl FallbackConfigPatch {
    pub fn is_empty(&self) -> bool {
        self == &FallbackConfigPatch::default()
    }

    /// This patch with every field `later` sets taken from `later`.
    pub fn merge(&self, later: &FallbackConfigPatch) -> FallbackConfigPatch {
        let mut merged = self.clone();
        for field in FallbackField::ALL {
            if let Some(value) = later.get(field) {
                merged.set(field, value);
            }
        }
        merged
    }

    /// Reads a patch from a JSON document (an admin request body), with errors naming the
    /// field. Syntax errors of the document itself are reported with `field` empty.
    pub fn from_json_slice(body: &[u8]) -> Result<FallbackConfigPatch, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|error| ConfigError {
                field: String::new(),
                variable: String::new(),
                value: String::new(),
                problem: ConfigProblem::Invalid {
                    expected: format!("valid JSON ({error})"),
                },
                origin: ConfigOrigin::Field,
            })?;
        FallbackConfigPatch::from_json_value(&value)
    }

    /// Reads a patch from a JSON value (a group's stored overrides, a parsed request body).
    /// `null` is the empty patch.
    pub fn from_json_value(value: &serde_json::Value) -> Result<FallbackConfigPatch, ConfigError> {
        let object = match value {
            serde_json::Value::Object(object) => object,
            serde_json::Value::Null => return Ok(FallbackConfigPatch::default()),
            other => {
                return Err(ConfigError {
                    field: String::new(),
                    variable: String::new(),
                    value: LooseValue::from_json(other).describe(),
                    problem: ConfigProblem::NotAnObject,
                    origin: ConfigOrigin::Field,
                })
            }
        };
        let mut patch = FallbackConfigPatch::default();
        for (name, value) in object {
            patch.set_loose(name, LooseValue::from_json(value))?;
        }
        Ok(patch)
    }

    /// The patch as a JSON object, durations as strings (for storage next to a group).
    pub fn to_json_value(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for field in FallbackField::ALL {
            if let Some(value) = self.get(field) {
                let json = match value {
                    FieldValue::Count(count) => serde_json::Value::from(count),
                    FieldValue::Duration(duration) => {
                        serde_json::Value::from(format_duration(duration))
                    }
                    FieldValue::Flag(flag) => serde_json::Value::from(flag),
                    FieldValue::Strategy(name) => serde_json::Value::from(name),
                };
                object.insert(field.name().to_string(), json);
            }
        }
        serde_json::Value::Object(object)
    }

    fn set_loose(&mut self, name: &str, value: LooseValue) -> Result<(), ConfigError> {
        let field = FallbackField::parse(name).ok_or_else(|| ConfigError {
            field: name.to_string(),
            variable: String::new(),
            value: value.describe(),
            problem: ConfigProblem::UnknownField,
            origin: ConfigOrigin::Field,
        })?;
        if value == LooseValue::Null {
            return Ok(());
        }
        let typed = field_value_from_loose(field, &value)?;
        self.set(field, typed);
        Ok(())
    }

    fn get(&self, field: FallbackField) -> Option<FieldValue> {
        match field {
            FallbackField::MaxRetries => self.max_retries.map(FieldValue::Count),
            FallbackField::RetryDelay => self.retry_delay.map(FieldValue::Duration),
            FallbackField::Strategy => self.strategy.clone().map(FieldValue::Strategy),
            FallbackField::EnableCircuitBreaker => {
                self.enable_circuit_breaker.map(FieldValue::Flag)
            }
            FallbackField::CircuitBreakerThreshold => {
                self.circuit_breaker_threshold.map(FieldValue::Count)
            }
            FallbackField::FailureWindow => self.failure_window.map(FieldValue::Duration),
            FallbackField::RecoveryWindow => self.recovery_window.map(FieldValue::Duration),
            FallbackField::EnableHealthCheck => self.enable_health_check.map(FieldValue::Flag),
            FallbackField::HealthCheckInterval => {
                self.health_check_interval.map(FieldValue::Duration)
            }
            FallbackField::FirstByteTimeout => self.first_byte_timeout.map(FieldValue::Duration),
            FallbackField::RequestTimeout => self.request_timeout.map(FieldValue::Duration),
        }
    }

    /// Stores a value of the type the field's rule produces; a value of another type cannot
    /// occur because every `FieldValue` is built from the same field's rule.
    fn set(&mut self, field: FallbackField, value: FieldValue) {
        match (field, value) {
            (FallbackField::MaxRetries, FieldValue::Count(v)) => self.max_retries = Some(v),
            (FallbackField::RetryDelay, FieldValue::Duration(v)) => self.retry_delay = Some(v),
            (FallbackField::Strategy, FieldValue::Strategy(v)) => self.strategy = Some(v),
            (FallbackField::EnableCircuitBreaker, FieldValue::Flag(v)) => {
                self.enable_circuit_breaker = Some(v)
            }
            (FallbackField::CircuitBreakerThreshold, FieldValue::Count(v)) => {
                self.circuit_breaker_threshold = Some(v)
            }
            (FallbackField::FailureWindow, FieldValue::Duration(v)) => {
                self.failure_window = Some(v)
            }
            (FallbackField::RecoveryWindow, FieldValue::Duration(v)) => {
                self.recovery_window = Some(v)
            }
            (FallbackField::EnableHealthCheck, FieldValue::Flag(v)) => {
                self.enable_health_check = Some(v)
            }
            (FallbackField::HealthCheckInterval, FieldValue::Duration(v)) => {
                self.health_check_interval = Some(v)
            }
            (FallbackField::FirstByteTimeout, FieldValue::Duration(v)) => {
                self.first_byte_timeout = Some(v)
            }
            (FallbackField::RequestTimeout, FieldValue::Duration(v)) => {
                self.request_timeout = Some(v)
            }
            _ => {}
        }
    }
}

impl From<&FallbackConfig> for FallbackConfigPatch {
    /// A patch that sets every field to the config's value.
    fn from(config: &FallbackConfig) -> Self {
        let mut patch = FallbackConfigPatch::default();
        for field in FallbackField::ALL {
            patch.set(field, config.get(field));
        }
        patch
    }
}

impl FallbackConfig {
    /// The seed's defaults, then the file's patch, then the `FALLBACK_*` environment.
    pub fn from_sources(
        file: &FallbackConfigPatch,
        env: &dyn EnvSource,
        is_known_strategy: &dyn Fn(&str) -> bool,
    ) -> Result<FallbackConfig, ConfigError> {
        let from_file = FallbackConfig::default().apply_patch(file, is_known_strategy)?;
        FallbackConfig::overlay_env(from_file, env, is_known_strategy)
    }

    /// Overlays `FALLBACK_*` variables on `base`; the first invalid one is refused. A variable
    /// set to the empty string counts as unset (container tooling often writes `NAME=`).
    /// Durations accept the human forms, and a bare integer means seconds; booleans accept
    /// true/false, 1/0, yes/no and on/off in any case.
    pub fn overlay_env(
        base: FallbackConfig,
        env: &dyn EnvSource,
        is_known_strategy: &dyn Fn(&str) -> bool,
    ) -> Result<FallbackConfig, ConfigError> {
        let mut config = base;
        for field in FallbackField::ALL {
            let Some(raw) = env.get(field.env_var()) else {
                continue;
            };
            let text = raw.trim();
            if text.is_empty() {
                continue;
            }
            let value = field_value_from_env(field, text, is_known_strategy)?;
            config.set(field, value);
        }
        config.validate(is_known_strategy)?;
        Ok(config)
    }

    /// This config with the patch's fields applied, validated as a whole. On error nothing
    /// changes: `self` is untouched.
    pub fn apply_patch(
        &self,
        patch: &FallbackConfigPatch,
        is_known_strategy: &dyn Fn(&str) -> bool,
    ) -> Result<FallbackConfig, ConfigError> {
        let mut config = self.clone();
        for field in FallbackField::ALL {
            if let Some(value) = patch.get(field) {
                config.set(field, value);
            }
        }
        config.validate(is_known_strategy)?;
        Ok(config)
    }

    /// Checks every field against its range and the strategy against the registry.
    pub fn validate(&self, is_known_strategy: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        for field in FallbackField::ALL {
            check_field_value(
                field,
                &self.get(field),
                ConfigOrigin::Field,
                is_known_strategy,
            )?;
        }
        Ok(())
    }

    fn get(&self, field: FallbackField) -> FieldValue {
        match field {
            FallbackField::MaxRetries => FieldValue::Count(self.max_retries),
            FallbackField::RetryDelay => FieldValue::Duration(self.retry_delay),
            FallbackField::Strategy => FieldValue::Strategy(self.strategy.clone()),
            FallbackField::EnableCircuitBreaker => FieldValue::Flag(self.enable_circuit_breaker),
            FallbackField::CircuitBreakerThreshold => {
                FieldValue::Count(self.circuit_breaker_threshold)
            }
            FallbackField::FailureWindow => FieldValue::Duration(self.failure_window),
            FallbackField::RecoveryWindow => FieldValue::Duration(self.recovery_window),
            FallbackField::EnableHealthCheck => FieldValue::Flag(self.enable_health_check),
            FallbackField::HealthCheckInterval => FieldValue::Duration(self.health_check_interval),
            FallbackField::FirstByteTimeout => FieldValue::Duration(self.first_byte_timeout),
            FallbackField::RequestTimeout => FieldValue::Duration(self.request_timeout),
        }
    }

    /// Stores a value of the type the field's rule produces (see `FallbackConfigPatch::set`).
    fn set(&mut self, field: FallbackField, value: FieldValue) {
        let mut patch = FallbackConfigPatch::default();
        patch.set(field, value);
        let FallbackConfigPatch {
            max_retries,
            retry_delay,
            strategy,
            enable_circuit_breaker,
            circuit_breaker_threshold,
            failure_window,
            recovery_window,
            enable_health_check,
            health_check_interval,
            first_byte_timeout,
            request_timeout,
        } = patch;
        if let Some(v) = max_retries {
            self.max_retries = v;
        }
        if let Some(v) = retry_delay {
            self.retry_delay = v;
        }
        if let Some(v) = strategy {
            self.strategy = v;
        }
        if let Some(v) = enable_circuit_breaker {
            self.enable_circuit_breaker = v;
        }
        if let Some(v) = circuit_breaker_threshold {
            self.circuit_breaker_threshold = v;
        }
        if let Some(v) = failure_window {
            self.failure_window = v;
        }
        if let Some(v) = recovery_window {
            self.recovery_window = v;
        }
        if let Some(v) = enable_health_check {
            self.enable_health_check = v;
        }
        if let Some(v) = health_check_interval {
            self.health_check_interval = v;
        }
        if let Some(v) = first_byte_timeout {
            self.first_byte_timeout = v;
        }
        if let Some(v) = request_timeout {
            self.request_timeout = v;
        }
    }
}

fn expected_text(rule: FieldRule) -> (String, String) {
    match rule {
        FieldRule::Count { min, max } => (
            format!("an integer between {min} and {max}"),
            format!("{min}..={max}"),
        ),
        FieldRule::Duration { min, max } => {
            let (min, max) = (format_duration(min), format_duration(max));
            (
                format!("a duration between {min} and {max}, like \"1s\" or \"5m\""),
                format!("{min}..={max}"),
            )
        }
        FieldRule::Flag => ("true or false".to_string(), "true or false".to_string()),
        FieldRule::StrategyName => ("a strategy name".to_string(), "a strategy name".to_string()),
    }
}

fn invalid(
    field: FallbackField,
    value: String,
    origin: ConfigOrigin,
    env_words: bool,
) -> ConfigError {
    let (mut expected, _) = expected_text(field.rule());
    if env_words {
        match field.rule() {
            FieldRule::Flag => expected = "true/false, 1/0, yes/no or on/off".to_string(),
            FieldRule::Duration { .. } => {
                expected.push_str(" (a bare integer means seconds)");
            }
            _ => {}
        }
    }
    ConfigError::new(field, value, ConfigProblem::Invalid { expected }, origin)
}

fn out_of_range(field: FallbackField, value: String, origin: ConfigOrigin) -> ConfigError {
    ConfigError::new(field, value, ConfigProblem::OutOfRange, origin)
}

/// Checks a typed value against the field's range (and the strategy registry).
fn check_field_value(
    field: FallbackField,
    value: &FieldValue,
    origin: ConfigOrigin,
    is_known_strategy: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    match (field.rule(), value) {
        (FieldRule::Count { min, max }, FieldValue::Count(count))
            if *count < min || *count > max =>
        {
            Err(out_of_range(field, count.to_string(), origin))
        }
        (FieldRule::Duration { min, max }, FieldValue::Duration(duration))
            if *duration < min || *duration > max =>
        {
            Err(out_of_range(field, format_duration(*duration), origin))
        }
        (FieldRule::StrategyName, FieldValue::Strategy(name)) if !is_known_strategy(name) => {
            let shown = match origin {
                ConfigOrigin::Env => name.clone(),
                ConfigOrigin::Field => format!("{name:?}"),
            };
            Err(ConfigError::new(
                field,
                shown,
                ConfigProblem::UnknownStrategy,
                origin,
            ))
        }
        _ => Ok(()),
    }
}

fn field_value_from_env(
    field: FallbackField,
    text: &str,
    is_known_strategy: &dyn Fn(&str) -> bool,
) -> Result<FieldValue, ConfigError> {
    let origin = ConfigOrigin::Env;
    let value = match field.rule() {
        FieldRule::Count { min, max } => {
            let number: i128 = text
                .parse()
                .map_err(|_| invalid(field, text.to_string(), origin, true))?;
            if number < i128::from(min) || number > i128::from(max) {
                return Err(out_of_range(field, text.to_string(), origin));
            }
            // In range of a u32 rule, so the conversion cannot fail.
            FieldValue::Count(u32::try_from(number).unwrap_or(min))
        }
        FieldRule::Duration { .. } => {
            let duration = if text.bytes().all(|b| b.is_ascii_digit()) {
                text.parse::<u64>().map(Duration::from_secs).ok()
            } else {
                parse_duration(text).ok()
            }
            .ok_or_else(|| invalid(field, text.to_string(), origin, true))?;
            FieldValue::Duration(duration)
        }
        FieldRule::Flag => {
            let flag = match text.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(invalid(field, text.to_string(), origin, true)),
            };
            FieldValue::Flag(flag)
        }
        FieldRule::StrategyName => FieldValue::Strategy(text.to_string()),
    };
    // Env values are shown raw in errors, so range errors use the text as written.
    check_field_value(field, &value, origin, is_known_strategy).map_err(|mut error| {
        error.value = text.to_string();
        error
    })?;
    Ok(value)
}

/// Converts one patch value to the field's type, checking ranges. The strategy name is only
/// checked for being a non-empty string here.
fn field_value_from_loose(
    field: FallbackField,
    value: &LooseValue,
) -> Result<FieldValue, ConfigError> {
    let origin = ConfigOrigin::Field;
    let refuse = || invalid(field, value.describe(), origin, false);
    let typed = match (field.rule(), value) {
        (FieldRule::Count { min, max }, LooseValue::Integer(number)) => {
            if *number < i128::from(min) || *number > i128::from(max) {
                return Err(out_of_range(field, value.describe(), origin));
            }
            FieldValue::Count(u32::try_from(*number).map_err(|_| refuse())?)
        }
        (FieldRule::Duration { .. }, LooseValue::Text(text)) => {
            FieldValue::Duration(parse_duration(text).map_err(|_| refuse())?)
        }
        (FieldRule::Flag, LooseValue::Bool(flag)) => FieldValue::Flag(*flag),
        (FieldRule::StrategyName, LooseValue::Text(name)) if !name.trim().is_empty() => {
            FieldValue::Strategy(name.trim().to_string())
        }
        _ => return Err(refuse()),
    };
    check_field_value(field, &typed, origin, &|_| true)?;
    Ok(typed)
}

/// Any scalar a JSON or TOML document can hold, so that type errors can name the field.
#[derive(Debug, Clone, PartialEq)]
enum LooseValue {
    Null,
    Bool(bool),
    Integer(i128),
    Float(f64),
    Text(String),
    Compound(&'static str),
}

impl LooseValue {
    fn from_json(value: &serde_json::Value) -> LooseValue {
        match value {
            serde_json::Value::Null => LooseValue::Null,
            serde_json::Value::Bool(flag) => LooseValue::Bool(*flag),
            serde_json::Value::Number(number) => {
                if let Some(unsigned) = number.as_u64() {
                    LooseValue::Integer(i128::from(unsigned))
                } else if let Some(signed) = number.as_i64() {
                    LooseValue::Integer(i128::from(signed))
                } else {
                    LooseValue::Float(number.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(text) => LooseValue::Text(text.clone()),
            serde_json::Value::Array(_) => LooseValue::Compound("an array"),
            serde_json::Value::Object(_) => LooseValue::Compound("an object"),
        }
    }

    /// The value as it would be written in JSON, for error messages.
    fn describe(&self) -> String {
        match self {
            LooseValue::Null => "null".to_string(),
            LooseValue::Bool(flag) => flag.to_string(),
            LooseValue::Integer(number) => number.to_string(),
            LooseValue::Float(number) => number.to_string(),
            LooseValue::Text(text) => format!("{text:?}"),
            LooseValue::Compound(kind) => (*kind).to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for LooseValue {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LooseValueVisitor)
    }
}

struct LooseValueVisitor;

impl<'de> de::Visitor<'de> for LooseValueVisitor {
    type Value = LooseValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a configuration value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<LooseValue, E> {
        Ok(LooseValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<LooseValue, E> {
        Ok(LooseValue::Integer(i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<LooseValue, E> {
        Ok(LooseValue::Integer(i128::from(v)))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<LooseValue, E> {
        Ok(LooseValue::Integer(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<LooseValue, E> {
        Ok(LooseValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseValue, E> {
        Ok(LooseValue::Text(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<LooseValue, E> {
        Ok(LooseValue::Text(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<LooseValue, E> {
        Ok(LooseValue::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<LooseValue, E> {
        Ok(LooseValue::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<LooseValue, D::Error> {
        deserializer.deserialize_any(LooseValueVisitor)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<LooseValue, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(LooseValue::Compound("an array"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<LooseValue, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(LooseValue::Compound("an object"))
    }
}

impl<'de> Deserialize<'de> for FallbackConfigPatch {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PatchVisitor)
    }
}

struct PatchVisitor;

impl<'de> de::Visitor<'de> for PatchVisitor {
    type Value = FallbackConfigPatch;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a table of fallback settings")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<FallbackConfigPatch, A::Error> {
        let mut patch = FallbackConfigPatch::default();
        while let Some(name) = map.next_key::<String>()? {
            if FallbackField::parse(&name).is_none() {
                return Err(de::Error::unknown_field(&name, &FallbackField::NAMES));
            }
            let value = map.next_value::<LooseValue>()?;
            patch
                .set_loose(&name, value)
                .map_err(|error| de::Error::custom(error.for_field()))?;
        }
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(name: &str) -> bool {
        BUILTIN_STRATEGIES.contains(&name)
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn overlay(pairs: &[(&str, &str)]) -> Result<FallbackConfig, ConfigError> {
        FallbackConfig::overlay_env(FallbackConfig::default(), &env(pairs), &builtin)
    }

    #[test]
    fn defaults_are_the_seeds_and_valid() {
        let config = FallbackConfig::default();
        assert_eq!(config.max_retries, 3);
        assert_eq!(config.retry_delay, Duration::from_secs(1));
        assert_eq!(config.strategy, "priority_first");
        assert!(config.enable_circuit_breaker);
        assert_eq!(config.circuit_breaker_threshold, 5);
        assert_eq!(config.failure_window, minutes(5));
        assert_eq!(config.recovery_window, minutes(10));
        assert!(config.enable_health_check);
        assert_eq!(config.health_check_interval, minutes(2));
        assert_eq!(config.first_byte_timeout, Duration::from_secs(60));
        assert_eq!(config.request_timeout, minutes(10));
        assert_eq!(config.validate(&builtin), Ok(()));
    }

    #[test]
    fn serialises_durations_as_strings() {
        let json = serde_json::to_value(FallbackConfig::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "max_retries": 3,
                "retry_delay": "1s",
                "strategy": "priority_first",
                "enable_circuit_breaker": true,
                "circuit_breaker_threshold": 5,
                "failure_window": "5m",
                "recovery_window": "10m",
                "enable_health_check": true,
                "health_check_interval": "2m",
                "first_byte_timeout": "1m",
                "request_timeout": "10m",
            })
        );
    }

    #[test]
    fn env_overlays_every_variable() {
        let config = overlay(&[
            ("FALLBACK_MAX_RETRIES", "7"),
            ("FALLBACK_RETRY_DELAY", "500ms"),
            ("FALLBACK_STRATEGY", "round_robin"),
            ("FALLBACK_ENABLE_CIRCUIT_BREAKER", "no"),
            ("FALLBACK_CIRCUIT_BREAKER_THRESHOLD", "100"),
            ("FALLBACK_FAILURE_WINDOW", "1h30m"),
            ("FALLBACK_RECOVERY_WINDOW", "24h"),
            ("FALLBACK_ENABLE_HEALTH_CHECK", "0"),
            ("FALLBACK_HEALTH_CHECK_INTERVAL", "90"),
            ("FALLBACK_FIRST_BYTE_TIMEOUT", "1.5s"),
            ("FALLBACK_REQUEST_TIMEOUT", "1h"),
        ])
        .unwrap();
        assert_eq!(config.max_retries, 7);
        assert_eq!(config.retry_delay, Duration::from_millis(500));
        assert_eq!(config.strategy, "round_robin");
        assert!(!config.enable_circuit_breaker);
        assert_eq!(config.circuit_breaker_threshold, 100);
        assert_eq!(config.failure_window, minutes(90));
        assert_eq!(config.recovery_window, minutes(24 * 60));
        assert!(!config.enable_health_check);
        assert_eq!(config.health_check_interval, Duration::from_secs(90));
        assert_eq!(config.first_byte_timeout, Duration::from_millis(1500));
        assert_eq!(config.request_timeout, minutes(60));
    }

    #[test]
    fn env_booleans_accept_the_usual_words() {
        for (text, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("off", false),
        ] {
            let config = overlay(&[("FALLBACK_ENABLE_HEALTH_CHECK", text)]).unwrap();
            assert_eq!(config.enable_health_check, expected, "{text}");
        }
        let error = overlay(&[("FALLBACK_ENABLE_HEALTH_CHECK", "maybe")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "FALLBACK_ENABLE_HEALTH_CHECK=maybe is invalid: must be true/false, 1/0, yes/no or on/off"
        );
    }

    #[test]
    fn env_errors_name_the_variable_and_the_range() {
        let error = overlay(&[("FALLBACK_MAX_RETRIES", "42")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "FALLBACK_MAX_RETRIES=42 is out of range: must be an integer between 0 and 10"
        );
        assert_eq!(error.field, "max_retries");
        assert_eq!(error.variable, "FALLBACK_MAX_RETRIES");
        assert_eq!(
            error.for_field(),
            "max_retries: 42 is out of range (0..=10)"
        );

        let error = overlay(&[("FALLBACK_MAX_RETRIES", "-1")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "FALLBACK_MAX_RETRIES=-1 is out of range: must be an integer between 0 and 10"
        );
        let error = overlay(&[("FALLBACK_MAX_RETRIES", "three")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "FALLBACK_MAX_RETRIES=three is invalid: must be an integer between 0 and 10"
        );
        let error = overlay(&[("FALLBACK_CIRCUIT_BREAKER_THRESHOLD", "0")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "FALLBACK_CIRCUIT_BREAKER_THRESHOLD=0 is out of range: must be an integer between 1 and 100"
        );
        let error = overlay(&[("FALLBACK_RETRY_DELAY", "6m")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "FALLBACK_RETRY_DELAY=6m is out of range: must be a duration between 0s and 5m, like \"1s\" or \"5m\""
        );
        let error = overlay(&[("FALLBACK_FAILURE_WINDOW", "30")]).unwrap_err();
        assert_eq!(error.variable, "FALLBACK_FAILURE_WINDOW");
        assert!(error
            .to_string()
            .starts_with("FALLBACK_FAILURE_WINDOW=30 is out of range"));
        let error = overlay(&[("FALLBACK_HEALTH_CHECK_INTERVAL", "soon")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("FALLBACK_HEALTH_CHECK_INTERVAL=soon is invalid: must be a duration"),
            "{error}"
        );
        let error = overlay(&[("FALLBACK_STRATEGY", "fastest")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("FALLBACK_STRATEGY=fastest is not a known strategy"),
            "{error}"
        );
    }

    #[test]
    fn env_range_edges_are_inclusive() {
        assert!(overlay(&[("FALLBACK_MAX_RETRIES", "0")]).is_ok());
        assert!(overlay(&[("FALLBACK_MAX_RETRIES", "10")]).is_ok());
        assert!(overlay(&[("FALLBACK_MAX_RETRIES", "11")]).is_err());
        assert!(overlay(&[("FALLBACK_RETRY_DELAY", "0")]).is_ok());
        assert!(overlay(&[("FALLBACK_RETRY_DELAY", "5m")]).is_ok());
        assert!(overlay(&[("FALLBACK_RETRY_DELAY", "5m1ms")]).is_err());
        assert!(overlay(&[("FALLBACK_FAILURE_WINDOW", "1m")]).is_ok());
        assert!(overlay(&[("FALLBACK_FAILURE_WINDOW", "59s")]).is_err());
        assert!(overlay(&[("FALLBACK_RECOVERY_WINDOW", "24h1s")]).is_err());
        assert!(overlay(&[("FALLBACK_HEALTH_CHECK_INTERVAL", "1h")]).is_ok());
        assert!(overlay(&[("FALLBACK_HEALTH_CHECK_INTERVAL", "61m")]).is_err());
        assert!(overlay(&[("FALLBACK_FIRST_BYTE_TIMEOUT", "1s")]).is_ok());
        assert!(overlay(&[("FALLBACK_FIRST_BYTE_TIMEOUT", "999ms")]).is_err());
        assert!(overlay(&[("FALLBACK_FIRST_BYTE_TIMEOUT", "11m")]).is_err());
        assert!(overlay(&[("FALLBACK_REQUEST_TIMEOUT", "2h")]).is_err());
    }

    #[test]
    fn env_refuses_the_first_invalid_and_ignores_empty() {
        let error = overlay(&[
            ("FALLBACK_MAX_RETRIES", "99"),
            ("FALLBACK_STRATEGY", "nope"),
        ])
        .unwrap_err();
        assert_eq!(error.field, "max_retries");
        let config = overlay(&[
            ("FALLBACK_MAX_RETRIES", "  "),
            ("FALLBACK_STRATEGY", " weighted "),
        ])
        .unwrap();
        assert_eq!(config.max_retries, 3);
        assert_eq!(config.strategy, "weighted");
    }

    #[test]
    fn custom_strategies_are_accepted_through_the_predicate() {
        let known = |name: &str| builtin(name) || name == "my_custom";
        let config = FallbackConfig::overlay_env(
            FallbackConfig::default(),
            &env(&[("FALLBACK_STRATEGY", "my_custom")]),
            &known,
        )
        .unwrap();
        assert_eq!(config.strategy, "my_custom");
    }

    #[test]
    fn patches_apply_and_validate() {
        let patch: FallbackConfigPatch = serde_json::from_str(
            r#"{"max_retries":5,"retry_delay":"2s","strategy":"weighted","enable_circuit_breaker":false,"failure_window":"10m"}"#,
        )
        .unwrap();
        let config = FallbackConfig::default()
            .apply_patch(&patch, &builtin)
            .unwrap();
        assert_eq!(config.max_retries, 5);
        assert_eq!(config.retry_delay, Duration::from_secs(2));
        assert_eq!(config.strategy, "weighted");
        assert!(!config.enable_circuit_breaker);
        assert_eq!(config.failure_window, minutes(10));
        assert_eq!(config.recovery_window, minutes(10));

        let unknown = FallbackConfigPatch {
            strategy: Some("fastest".to_string()),
            ..Default::default()
        };
        let error = FallbackConfig::default()
            .apply_patch(&unknown, &builtin)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("strategy: \"fastest\" is not a known strategy"),
            "{error}"
        );
        // A patch built in code (not parsed) is still range-checked when applied.
        let too_many = FallbackConfigPatch {
            max_retries: Some(42),
            ..Default::default()
        };
        let error = FallbackConfig::default()
            .apply_patch(&too_many, &builtin)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "max_retries: 42 is out of range (0..=10)"
        );
        assert_eq!(
            error.for_env(),
            "FALLBACK_MAX_RETRIES=42 is out of range: must be an integer between 0 and 10"
        );
    }

    #[test]
    fn patch_json_errors_name_the_field() {
        let rows = [
            (r#"{"max_retries":42}"#, "max_retries: 42 is out of range (0..=10)"),
            (r#"{"max_retries":-1}"#, "max_retries: -1 is out of range (0..=10)"),
            (
                r#"{"max_retries":"3"}"#,
                "max_retries: \"3\" is invalid: must be an integer between 0 and 10",
            ),
            (
                r#"{"max_retries":2.5}"#,
                "max_retries: 2.5 is invalid: must be an integer between 0 and 10",
            ),
            (
                r#"{"retry_delay":1000}"#,
                "retry_delay: 1000 is invalid: must be a duration between 0s and 5m, like \"1s\" or \"5m\"",
            ),
            (
                r#"{"retry_delay":"10m"}"#,
                "retry_delay: 10m is out of range (0s..=5m)",
            ),
            (
                r#"{"enable_health_check":"yes"}"#,
                "enable_health_check: \"yes\" is invalid: must be true or false",
            ),
            (
                r#"{"strategy":5}"#,
                "strategy: 5 is invalid: must be a strategy name",
            ),
            (
                r#"{"failure_window":{"secs":5}}"#,
                "failure_window: an object is invalid: must be a duration between 1m and 24h, like \"1s\" or \"5m\"",
            ),
        ];
        for (body, message) in rows {
            let error = FallbackConfigPatch::from_json_slice(body.as_bytes()).unwrap_err();
            assert_eq!(error.to_string(), message, "{body}");
            // The serde path says the same, so `Json<FallbackConfigPatch>` extractors name the
            // field too.
            let serde_error = serde_json::from_str::<FallbackConfigPatch>(body).unwrap_err();
            assert!(
                serde_error.to_string().starts_with(message),
                "{serde_error}"
            );
        }
    }

    #[test]
    fn patch_refuses_unknown_fields() {
        let error = FallbackConfigPatch::from_json_slice(br#"{"max_retry":3}"#).unwrap_err();
        assert_eq!(error.field, "max_retry");
        assert!(
            error.to_string().starts_with("max_retry: unknown field"),
            "{error}"
        );
        let serde_error =
            serde_json::from_str::<FallbackConfigPatch>(r#"{"max_retry":3}"#).unwrap_err();
        assert!(
            serde_error.to_string().contains("max_retry"),
            "{serde_error}"
        );

        let error = FallbackConfigPatch::from_json_slice(b"[1]").unwrap_err();
        assert_eq!(error.problem, ConfigProblem::NotAnObject);
        assert!(FallbackConfigPatch::from_json_slice(b"{not json").is_err());
    }

    #[test]
    fn patch_null_is_absent_and_empty_is_empty() {
        let patch = FallbackConfigPatch::from_json_slice(br#"{"max_retries":null}"#).unwrap();
        assert!(patch.is_empty());
        assert!(
            FallbackConfigPatch::from_json_value(&serde_json::Value::Null)
                .unwrap()
                .is_empty()
        );
        assert!(!FallbackConfigPatch {
            enable_health_check: Some(false),
            ..Default::default()
        }
        .is_empty());
    }

    #[test]
    fn patch_merge_prefers_later_fields() {
        let earlier = FallbackConfigPatch {
            max_retries: Some(1),
            strategy: Some("weighted".to_string()),
            ..Default::default()
        };
        let later = FallbackConfigPatch {
            strategy: Some("hybrid".to_string()),
            retry_delay: Some(Duration::from_secs(3)),
            ..Default::default()
        };
        let merged = earlier.merge(&later);
        assert_eq!(merged.max_retries, Some(1));
        assert_eq!(merged.strategy.as_deref(), Some("hybrid"));
        assert_eq!(merged.retry_delay, Some(Duration::from_secs(3)));
        assert_eq!(merged.failure_window, None);
    }

    #[test]
    fn patch_serialises_only_given_fields_and_round_trips() {
        let patch = FallbackConfigPatch {
            retry_delay: Some(Duration::from_millis(1500)),
            enable_circuit_breaker: Some(false),
            ..Default::default()
        };
        let json = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"retry_delay": "1s500ms", "enable_circuit_breaker": false})
        );
        assert_eq!(patch.to_json_value(), json);
        assert_eq!(FallbackConfigPatch::from_json_value(&json).unwrap(), patch);

        let full = FallbackConfigPatch::from(&FallbackConfig::default());
        let rebuilt = FallbackConfig {
            max_retries: 0,
            ..FallbackConfig::default()
        }
        .apply_patch(&full, &builtin)
        .unwrap();
        assert_eq!(rebuilt, FallbackConfig::default());
        let reparsed: FallbackConfigPatch =
            serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(reparsed, full);
    }

    #[test]
    fn sources_layer_file_then_env() {
        let file = FallbackConfigPatch {
            max_retries: Some(1),
            strategy: Some("least_used".to_string()),
            ..Default::default()
        };
        let config =
            FallbackConfig::from_sources(&file, &env(&[("FALLBACK_MAX_RETRIES", "2")]), &builtin)
                .unwrap();
        assert_eq!(config.max_retries, 2);
        assert_eq!(config.strategy, "least_used");
    }

    #[test]
    fn field_table_is_consistent() {
        for field in FallbackField::ALL {
            assert_eq!(FallbackField::parse(field.name()), Some(field));
            assert_eq!(
                field.env_var(),
                format!("FALLBACK_{}", field.name().to_ascii_uppercase())
            );
        }
    }
}
