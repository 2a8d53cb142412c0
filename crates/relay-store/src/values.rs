//! Moving values between Rust and the Any driver.
//!
//! The Any driver knows only a handful of types (i16/i32/i64, f32/f64, text, blobs, bool), so
//! the unsigned integers of the domain are stored as signed BIGINT and checked on the way back,
//! JSON documents travel as text, and booleans as 0/1 integers. Reading is strict about
//! meaning (a negative token count is `Corrupt`) but lenient about representation where the
//! databases disagree (SQLite answers `SUM` over DOUBLE with an integer 0 when there is nothing
//! to sum).

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::error::StoreError;

/// A value bound to a statement built at run time (partial updates, optional filters).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Integer(Option<i32>),
    BigInt(Option<i64>),
    Double(Option<f64>),
    Text(Option<String>),
}

impl SqlValue {
    pub(crate) fn boolean(value: bool) -> SqlValue {
        SqlValue::Integer(Some(i32::from(value)))
    }

    pub(crate) fn big_int(value: i64) -> SqlValue {
        SqlValue::BigInt(Some(value))
    }

    pub(crate) fn text(value: impl Into<String>) -> SqlValue {
        SqlValue::Text(Some(value.into()))
    }
}

impl SqlValue {
    fn is_null(&self) -> bool {
        matches!(
            self,
            SqlValue::Integer(None)
                | SqlValue::BigInt(None)
                | SqlValue::Double(None)
                | SqlValue::Text(None)
        )
    }
}

/// Binds `values` to `query` in order.
///
/// A statement with a NULL among its values is not kept in the connection's statement cache:
/// the Any driver sends NULL without its column's type, and PostgreSQL would fix the
/// parameter's type from that first use, refusing a real value bound to the same cached
/// statement later ("incorrect binary data format in bind parameter").
pub(crate) fn bind_values<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    values: &[SqlValue],
) -> Query<'q, Any, AnyArguments<'q>> {
    if values.iter().any(SqlValue::is_null) {
        query = query.persistent(false);
    }
    for value in values {
        query = match value.clone() {
            SqlValue::Integer(value) => query.bind(value),
            SqlValue::BigInt(value) => query.bind(value),
            SqlValue::Double(value) => query.bind(value),
            SqlValue::Text(value) => query.bind(value),
        };
    }
    query
}

/// A u64 as the signed BIGINT it is stored in. Counts beyond `i64::MAX` cannot happen in
/// practice; saturating keeps the write from failing if one ever did.
pub(crate) fn big_int_from_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Serialises a document stored in a TEXT column.
pub(crate) fn json_text<T: Serialize + ?Sized>(
    value: &T,
    what: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|error| StoreError::Corrupt(format!("cannot encode {what} as JSON: {error}")))
}

pub(crate) fn read_i64(row: &AnyRow, column: &str) -> Result<i64, StoreError> {
    Ok(row.try_get::<i64, _>(column)?)
}

pub(crate) fn read_optional_i64(row: &AnyRow, column: &str) -> Result<Option<i64>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(column)?)
}

pub(crate) fn read_i32(row: &AnyRow, column: &str) -> Result<i32, StoreError> {
    let value = read_i64(row, column)?;
    i32::try_from(value).map_err(|_| out_of_range(column, value))
}

pub(crate) fn read_u64(row: &AnyRow, column: &str) -> Result<u64, StoreError> {
    let value = read_i64(row, column)?;
    u64::try_from(value).map_err(|_| out_of_range(column, value))
}

pub(crate) fn read_u32(row: &AnyRow, column: &str) -> Result<u32, StoreError> {
    let value = read_i64(row, column)?;
    u32::try_from(value).map_err(|_| out_of_range(column, value))
}

pub(crate) fn read_optional_u32(row: &AnyRow, column: &str) -> Result<Option<u32>, StoreError> {
    read_optional_i64(row, column)?
        .map(|value| u32::try_from(value).map_err(|_| out_of_range(column, value)))
        .transpose()
}

pub(crate) fn read_optional_u64(row: &AnyRow, column: &str) -> Result<Option<u64>, StoreError> {
    read_optional_i64(row, column)?
        .map(|value| u64::try_from(value).map_err(|_| out_of_range(column, value)))
        .transpose()
}

pub(crate) fn read_optional_u16(row: &AnyRow, column: &str) -> Result<Option<u16>, StoreError> {
    read_optional_i64(row, column)?
        .map(|value| u16::try_from(value).map_err(|_| out_of_range(column, value)))
        .transpose()
}

pub(crate) fn read_bool(row: &AnyRow, column: &str) -> Result<bool, StoreError> {
    Ok(read_i64(row, column)? != 0)
}

pub(crate) fn read_text(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    read_optional_text(row, column)?
        .ok_or_else(|| StoreError::Corrupt(format!("column {column} is unexpectedly NULL")))
}

/// Reads a text column, accepting the bytes MySQL's Any driver reports for `TEXT` columns
/// (it types them as blobs) as long as they are UTF-8.
pub(crate) fn read_optional_text(row: &AnyRow, column: &str) -> Result<Option<String>, StoreError> {
    match row.try_get::<Option<String>, _>(column) {
        Ok(text) => Ok(text),
        Err(text_error) => match row.try_get::<Option<Vec<u8>>, _>(column) {
            Ok(bytes) => bytes
                .map(|bytes| {
                    String::from_utf8(bytes).map_err(|_| {
                        StoreError::Corrupt(format!("column {column} is not valid UTF-8"))
                    })
                })
                .transpose(),
            Err(_) => Err(StoreError::Database(text_error)),
        },
    }
}

/// Reads a DOUBLE, accepting an integer where a database produced one for a whole number.
pub(crate) fn read_f64(row: &AnyRow, column: &str) -> Result<f64, StoreError> {
    Ok(read_optional_f64(row, column)?.unwrap_or(0.0))
}

pub(crate) fn read_optional_f64(row: &AnyRow, column: &str) -> Result<Option<f64>, StoreError> {
    match row.try_get::<Option<f64>, _>(column) {
        Ok(value) => Ok(value),
        Err(double_error) => match row.try_get::<Option<i64>, _>(column) {
            // Whole-number amounts of money are far below 2^53: the conversion is exact.
            Ok(value) => Ok(value.map(|whole| whole as f64)),
            Err(_) => Err(StoreError::Database(double_error)),
        },
    }
}

/// Reads a JSON document from a TEXT column.
pub(crate) fn read_json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, StoreError> {
    let text = read_text(row, column)?;
    serde_json::from_str(&text).map_err(|error| {
        StoreError::Corrupt(format!("column {column} is not the expected JSON: {error}"))
    })
}

fn out_of_range(column: &str, value: i64) -> StoreError {
    StoreError::Corrupt(format!(
        "column {column} holds {value}, which is out of range"
    ))
}
