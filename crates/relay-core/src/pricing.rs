//! Cost in USD of an attempt's usage.
//!
//! Prices are per million tokens, looked up by model name. Anthropic's list prices
//! (<https://docs.anthropic.com/en/docs/about-claude/pricing>) are built in by model prefix;
//! cache reads cost 0.1× the input price and 5-minute cache writes 1.25×. Operators may
//! override or add prices by model name or prefix.
//!
//! Lookup, in order: the longest key that is a prefix of the (lower-cased) model name; else the
//! longest key contained in it, so that provider-decorated names such as Bedrock's
//! `us.anthropic.claude-opus-4-1-20250805-v1:0` still find their price; else the model
//! family's current price; else Sonnet's, which is the middle of the range and the most common
//! model behind Claude Code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{ModelFamily, Usage};

/// USD per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cache_read_per_mtok: f64,
    pub cache_write_per_mtok: f64,
}

impl ModelPrice {
    /// A price with Anthropic's cache multipliers: reads 0.1× input, 5-minute writes 1.25×.
    pub fn with_standard_cache(input_per_mtok: f64, output_per_mtok: f64) -> ModelPrice {
        ModelPrice {
            input_per_mtok,
            output_per_mtok,
            cache_read_per_mtok: input_per_mtok * 0.1,
            cache_write_per_mtok: input_per_mtok * 1.25,
        }
    }
}

/// Prices by model name or prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    /// Lower-cased keys, longest first, so the first match is the most specific.
    entries: Vec<(String, ModelPrice)>,
}

const OPUS_CURRENT: (f64, f64) = (5.0, 25.0);
const OPUS_LEGACY: (f64, f64) = (15.0, 75.0);
const SONNET: (f64, f64) = (3.0, 15.0);
const HAIKU_CURRENT: (f64, f64) = (1.0, 5.0);

const BUILTIN_PRICES: [(&str, (f64, f64)); 13] = [
    ("claude-opus-4-6", OPUS_CURRENT),
    ("claude-opus-4-5", OPUS_CURRENT),
    ("claude-opus-4-1", OPUS_LEGACY),
    ("claude-opus-4", OPUS_LEGACY),
    ("claude-3-opus", OPUS_LEGACY),
    ("claude-sonnet-4", SONNET),
    ("claude-3-7-sonnet", SONNET),
    ("claude-3-5-sonnet", SONNET),
    ("claude-3-sonnet", SONNET),
    ("claude-haiku-4-5", HAIKU_CURRENT),
    ("claude-haiku-4", HAIKU_CURRENT),
    ("claude-3-5-haiku", (0.8, 4.0)),
    ("claude-3-haiku", (0.25, 1.25)),
];

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable::with_overrides(BTreeMap::new())
    }
}

impl PriceTable {
    /// The built-in prices with `overrides` added; an override with the same key as a
    /// built-in replaces it. Keys are model names or prefixes, matched case-insensitively,
    /// and the longest matching key wins whichever table it came from.
    pub fn with_overrides(overrides: BTreeMap<String, ModelPrice>) -> Self {
        let mut by_key: BTreeMap<String, ModelPrice> = BUILTIN_PRICES
            .iter()
            .map(|(prefix, (input, output))| {
                (
                    prefix.to_string(),
                    ModelPrice::with_standard_cache(*input, *output),
                )
            })
            .collect();
        for (key, price) in overrides {
            let key = key.trim().to_ascii_lowercase();
            if !key.is_empty() {
                by_key.insert(key, price);
            }
        }
        let mut entries: Vec<(String, ModelPrice)> = by_key.into_iter().collect();
        entries.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        PriceTable { entries }
    }

    pub fn price_for(&self, model: &str) -> ModelPrice {
        let model = model.trim();
        // Model names are nearly always lower case already: copied only when they are not.
        let model: std::borrow::Cow<'_, str> = if model.bytes().any(|b| b.is_ascii_uppercase()) {
            model.to_ascii_lowercase().into()
        } else {
            model.into()
        };
        if let Some((_, price)) = self.entries.iter().find(|(key, _)| model.starts_with(key)) {
            return price.clone();
        }
        if let Some((_, price)) = self
            .entries
            .iter()
            .find(|(key, _)| model.contains(key.as_str()))
        {
            return price.clone();
        }
        let (input, output) = match ModelFamily::of(&model) {
            ModelFamily::Opus => OPUS_CURRENT,
            ModelFamily::Haiku => HAIKU_CURRENT,
            ModelFamily::Sonnet | ModelFamily::Other => SONNET,
        };
        ModelPrice::with_standard_cache(input, output)
    }

    pub fn cost_usd(&self, model: &str, usage: &Usage) -> f64 {
        let price = self.price_for(model);
        let weighted = usage.input_tokens as f64 * price.input_per_mtok
            + usage.output_tokens as f64 * price.output_per_mtok
            + usage.cache_read_input_tokens as f64 * price.cache_read_per_mtok
            + usage.cache_creation_input_tokens as f64 * price.cache_write_per_mtok;
        weighted / 1_000_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn io(table: &PriceTable, model: &str) -> (f64, f64) {
        let price = table.price_for(model);
        (price.input_per_mtok, price.output_per_mtok)
    }

    #[test]
    fn built_in_prices_by_model() {
        let table = PriceTable::default();
        let rows = [
            ("claude-opus-4-6", (5.0, 25.0)),
            ("claude-opus-4-5-20251101", (5.0, 25.0)),
            ("claude-opus-4-1-20250805", (15.0, 75.0)),
            ("claude-opus-4-20250514", (15.0, 75.0)),
            ("claude-3-opus-20240229", (15.0, 75.0)),
            ("claude-sonnet-4-5-20250929", (3.0, 15.0)),
            ("claude-sonnet-4-20250514", (3.0, 15.0)),
            ("claude-3-7-sonnet-20250219", (3.0, 15.0)),
            ("claude-haiku-4-5-20251001", (1.0, 5.0)),
            ("claude-3-5-haiku-20241022", (0.8, 4.0)),
            ("claude-3-haiku-20240307", (0.25, 1.25)),
            ("Claude-Opus-4-5", (5.0, 25.0)),
            ("us.anthropic.claude-opus-4-1-20250805-v1:0", (15.0, 75.0)),
            ("some-future-opus", (5.0, 25.0)),
            ("some-future-haiku", (1.0, 5.0)),
            ("glm-4.6", (3.0, 15.0)),
            ("", (3.0, 15.0)),
        ];
        for (model, expected) in rows {
            assert_eq!(io(&table, model), expected, "{model}");
        }
    }

    #[test]
    fn cache_prices_follow_input() {
        let price = PriceTable::default().price_for("claude-sonnet-4-5");
        assert!(close(price.cache_read_per_mtok, 0.3));
        assert!(close(price.cache_write_per_mtok, 3.75));
    }

    #[test]
    fn cost_sums_every_kind_of_token() {
        let table = PriceTable::default();
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_input_tokens: 2_000_000,
            cache_creation_input_tokens: 400_000,
        };
        // 1M×3 + 0.1M×15 + 2M×0.3 + 0.4M×3.75 = 3 + 1.5 + 0.6 + 1.5
        assert!(close(table.cost_usd("claude-sonnet-4-5", &usage), 6.6));
        assert!(close(
            table.cost_usd("claude-sonnet-4-5", &Usage::default()),
            0.0
        ));
        let small = Usage {
            input_tokens: 25,
            output_tokens: 15,
            ..Usage::default()
        };
        assert!(close(
            table.cost_usd("claude-opus-4-5", &small),
            (25.0 * 5.0 + 15.0 * 25.0) / 1e6
        ));
    }

    #[test]
    fn overrides_replace_and_longest_prefix_wins() {
        let custom = ModelPrice {
            input_per_mtok: 0.5,
            output_per_mtok: 2.0,
            cache_read_per_mtok: 0.05,
            cache_write_per_mtok: 0.0,
        };
        let mut overrides = BTreeMap::new();
        overrides.insert("GLM-".to_string(), custom.clone());
        overrides.insert(
            "claude-opus-4-5".to_string(),
            ModelPrice::with_standard_cache(4.0, 20.0),
        );
        overrides.insert(
            "claude".to_string(),
            ModelPrice::with_standard_cache(9.0, 9.0),
        );
        let table = PriceTable::with_overrides(overrides);
        assert_eq!(table.price_for("glm-4.6"), custom);
        assert_eq!(io(&table, "claude-opus-4-5-20251101"), (4.0, 20.0));
        // The shorter "claude" override loses to the longer built-in prefix...
        assert_eq!(io(&table, "claude-3-haiku-20240307"), (0.25, 1.25));
        // ...and wins where no longer key matches.
        assert_eq!(io(&table, "claude-instant-1.2"), (9.0, 9.0));
    }

    #[test]
    fn prices_deserialise_from_config() {
        let price: ModelPrice = serde_json::from_str(
            r#"{"input_per_mtok":1,"output_per_mtok":2,"cache_read_per_mtok":0.1,"cache_write_per_mtok":1.25}"#,
        )
        .unwrap();
        assert_eq!(price, ModelPrice::with_standard_cache(1.0, 2.0));
    }
}
