//! What a successful answer of the mock looks like.
//!
//! The figures are fixed per mock instance so that tests can assert exact usage and exact text:
//! a relay that records usage must report precisely these numbers.

use std::time::Duration;

/// The text the mock answers with unless a test chooses another.
pub const DEFAULT_MOCK_TEXT: &str = "Hello from the mock upstream.";

/// The model named in answers when the request carries none (or `model_echo` is off).
pub const DEFAULT_MOCK_MODEL: &str = "claude-sonnet-4-5-20250929";

/// How the mock answers a request whose behaviour is `Behavior::Ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    /// The assistant text of every successful answer (JSON or streamed).
    pub text: String,
    /// How many `content_block_delta` events a stream splits `text` into; at least one is sent,
    /// and never more than `text` has characters, so no delta is empty.
    pub text_chunks: usize,
    /// The pause between two consecutive stream events, on tokio's clock so that tests with
    /// paused time can observe chunking without waiting for real.
    pub chunk_delay: Duration,
    /// Token counts reported by every successful answer.
    pub usage: MockUsage,
    /// Answer with the request's `model`, as Anthropic does; otherwise always name
    /// [`DEFAULT_MOCK_MODEL`].
    pub model_echo: bool,
    /// Keep a copy of every request for [`crate::MockUpstream::requests`]. Benchmarks switch it
    /// off so that the mock allocates nothing per request beyond the answer itself; per
    /// credential counts are kept either way.
    pub record: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            text: DEFAULT_MOCK_TEXT.to_owned(),
            text_chunks: 4,
            chunk_delay: Duration::ZERO,
            usage: MockUsage::default(),
            model_echo: true,
            record: true,
        }
    }
}

/// Token usage the mock reports, shaped like Anthropic's `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockUsage {
    /// Reported in the JSON answer and in the stream's `message_start`.
    pub input_tokens: u64,
    /// The final cumulative count: the JSON answer's figure and the stream's `message_delta`
    /// figure (`message_start` reports 1, as Anthropic does).
    pub output_tokens: u64,
    /// Prompt-cache hits, reported beside `input_tokens`.
    pub cache_read_input_tokens: u64,
    /// Prompt-cache writes, reported beside `input_tokens`.
    pub cache_creation_input_tokens: u64,
}

impl Default for MockUsage {
    fn default() -> Self {
        MockUsage {
            input_tokens: 12,
            output_tokens: 7,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
        }
    }
}
