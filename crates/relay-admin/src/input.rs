//! Reading admin payloads field by field, so every refusal names its field.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::AdminError;

/// A JSON object payload with a fixed set of allowed fields.
#[derive(Debug)]
pub struct Payload {
    fields: Map<String, Value>,
}

impl Payload {
    /// Parses `body` as a JSON object and refuses fields outside `allowed`.
    pub fn parse(body: &Bytes, allowed: &[&str]) -> Result<Payload, AdminError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| AdminError::Invalid(format!("body is not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(AdminError::Invalid("body must be a JSON object".to_owned()));
        };
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(AdminError::Invalid(format!(
                "{unknown}: unknown field (allowed: {})",
                allowed.join(", ")
            )));
        }
        Ok(Payload { fields })
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// The field's value, or None when absent or null.
    pub fn optional<T: DeserializeOwned>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<Option<T>, AdminError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|_| AdminError::Invalid(format!("{name}: must be {expected}"))),
        }
    }

    pub fn required<T: DeserializeOwned>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<T, AdminError> {
        self.optional(name, expected)?
            .ok_or_else(|| AdminError::Invalid(format!("{name}: is required ({expected})")))
    }

    /// For updates: absent → None; null → Some(None) (clear); value → Some(Some(v)).
    pub fn nullable<T: DeserializeOwned>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<Option<Option<T>>, AdminError> {
        match self.fields.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(value) => serde_json::from_value(value.clone())
                .map(|v| Some(Some(v)))
                .map_err(|_| AdminError::Invalid(format!("{name}: must be {expected} or null"))),
        }
    }

    pub fn raw(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A time given as RFC 3339 or unix seconds.
    pub fn time(&self, name: &str) -> Result<Option<Option<relay_core::UnixMillis>>, AdminError> {
        match self.fields.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::Number(n)) => n
                .as_i64()
                .filter(|s| *s >= 0)
                .map(|s| Some(Some(s.saturating_mul(1000))))
                .ok_or_else(|| {
                    AdminError::Invalid(format!("{name}: must be an RFC 3339 time or unix seconds"))
                }),
            Some(Value::String(s)) => relay_core::duration::parse_time(s)
                .map(|t| Some(Some(t)))
                .map_err(|e| AdminError::Invalid(format!("{name}: {e}"))),
            Some(_) => Err(AdminError::Invalid(format!(
                "{name}: must be an RFC 3339 time or unix seconds"
            ))),
        }
    }
}

/// A non-empty trimmed name of at most 100 characters (MySQL indexes group names up to 191).
pub fn check_name(field: &str, name: &str) -> Result<String, AdminError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(AdminError::Invalid(format!("{field}: must not be empty")));
    }
    if trimmed.chars().count() > 100 {
        return Err(AdminError::Invalid(format!(
            "{field}: must be at most 100 characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Parses an id from a path segment.
pub fn path_id(raw: &str, what: &str) -> Result<i64, AdminError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AdminError::NotFound(format!("{what} {raw} not found")))
}

/// Parses an optional positive integer from a query parameter.
pub fn query_id(value: Option<&String>, name: &str) -> Result<Option<i64>, AdminError> {
    match value {
        None => Ok(None),
        Some(raw) if raw.is_empty() => Ok(None),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| AdminError::Invalid(format!("{name}: must be a positive integer"))),
    }
}
