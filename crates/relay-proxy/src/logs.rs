//! The fallback log lines, in the seed's Chinese (default) or English.
//!
//! Every line is emitted through `tracing` with structured fields beside the sentence, so a
//! JSON log keeps `request_id`, `group_id`, `account`, `attempt`, `class`, `status` and
//! `duration_ms` as fields. No function here takes a secret.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLang {
    Zh,
    En,
}

impl LogLang {
    pub fn parse(value: &str) -> Option<LogLang> {
        match value.trim().to_ascii_lowercase().as_str() {
            "zh" | "zh-cn" | "cn" | "chinese" => Some(LogLang::Zh),
            "en" | "en-us" | "english" => Some(LogLang::En),
            _ => None,
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// 🚀 The start of a request's fallback loop.
pub fn start(lang: LogLang, candidates: usize, strategy: &str) -> String {
    match lang {
        LogLang::Zh => format!("🚀 开始处理fallback请求，账号数量: {candidates}，策略: {strategy}"),
        LogLang::En => format!(
            "🚀 Handling request with fallback, accounts: {candidates}, strategy: {strategy}"
        ),
    }
}

/// 🔄 One attempt on one account.
pub fn attempt(
    lang: LogLang,
    index: usize,
    total: usize,
    account: &str,
    platform: &str,
    priority: i32,
) -> String {
    match lang {
        LogLang::Zh => format!(
            "🔄 尝试使用账号 [{index}/{total}]: {account} (平台: {platform}, 优先级: {priority})"
        ),
        LogLang::En => format!(
            "🔄 Trying account [{index}/{total}]: {account} (platform: {platform}, priority: {priority})"
        ),
    }
}

/// ❌ An attempt failed.
pub fn attempt_failed(lang: LogLang, account: &str, reason: &str) -> String {
    match lang {
        LogLang::Zh => format!("❌ 账号 {account} 请求失败: {reason}"),
        LogLang::En => format!("❌ Account {account} failed: {reason}"),
    }
}

/// 🔄 Moving on to the next account.
pub fn switching(lang: LogLang) -> String {
    match lang {
        LogLang::Zh => "🔄 切换到下一个账号进行重试...".to_owned(),
        LogLang::En => "🔄 Switching to the next account...".to_owned(),
    }
}

/// ✅ An attempt succeeded.
pub fn attempt_succeeded(lang: LogLang, account: &str, took: Duration) -> AttemptSucceeded<'_> {
    AttemptSucceeded {
        lang,
        account,
        took,
    }
}

/// The line of every successful request, formatted straight into the log line (no string
/// of its own: it is written once per request).
#[derive(Debug, Clone, Copy)]
pub struct AttemptSucceeded<'a> {
    lang: LogLang,
    account: &'a str,
    took: Duration,
}

impl std::fmt::Display for AttemptSucceeded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tenths of a second in integers, rounded as `format_seconds_one_decimal` rounds (a
        // float written to one decimal costs several times more), and the line written piece
        // by piece: `write!` takes every piece and number through the formatting machinery.
        let tenths = u64::try_from((self.took.as_millis() + 50) / 100).unwrap_or(u64::MAX);
        let (before, after) = match self.lang {
            LogLang::Zh => ("✅ 账号 ", " 请求成功，耗时: "),
            LogLang::En => ("✅ Account ", " succeeded in "),
        };
        f.write_str(before)?;
        f.write_str(self.account)?;
        f.write_str(after)?;
        f.write_str(itoa::Buffer::new().format(tenths / 10))?;
        f.write_str(".")?;
        f.write_str(itoa::Buffer::new().format(tenths % 10))?;
        f.write_str("s")
    }
}

/// 💥 Every allowed account failed.
pub fn all_failed(lang: LogLang, attempts: usize, took: Duration) -> String {
    match lang {
        LogLang::Zh => format!(
            "💥 所有账号都失败，尝试次数: {attempts}，耗时: {}",
            seconds(took)
        ),
        LogLang::En => format!(
            "💥 All accounts failed after {attempts} attempts in {}",
            seconds(took)
        ),
    }
}

/// 🚫 No account of the group can take the request right now.
pub fn none_eligible(lang: LogLang, group: &str) -> String {
    match lang {
        LogLang::Zh => format!("🚫 分组 {group} 当前没有可用账号"),
        LogLang::En => format!("🚫 Group {group} has no usable account right now"),
    }
}

/// ⚠️ The group breaker reached its threshold.
pub fn group_threshold(lang: LogLang, group: &str, threshold: u32) -> String {
    match lang {
        LogLang::Zh => format!("⚠️ 检测到分组 {group} 连续失败次数达到阈值 {threshold}"),
        LogLang::En => {
            format!("⚠️ Group {group} reached the consecutive failure threshold {threshold}")
        }
    }
}

/// 🔴 A breaker opened.
pub fn breaker_opened(lang: LogLang) -> String {
    match lang {
        LogLang::Zh => "🔴 熔断器已开启，暂时停止请求".to_owned(),
        LogLang::En => "🔴 Circuit breaker opened, requests paused".to_owned(),
    }
}

/// ⏳ When the breaker will let a trial through.
pub fn half_open_in(lang: LogLang, wait: Duration) -> String {
    match lang {
        LogLang::Zh => format!("⏳ {}后将进入半开状态进行恢复检测", human_zh(wait)),
        LogLang::En => format!(
            "⏳ Half-open recovery check in {}",
            relay_core::duration::format_duration(wait)
        ),
    }
}

fn human_zh(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}分钟", secs / 60)
    } else {
        format!("{secs}秒")
    }
}

/// 🟢 A breaker closed again.
pub fn breaker_closed(lang: LogLang, subject: &str) -> String {
    match lang {
        LogLang::Zh => format!("🟢 {subject} 熔断器已关闭，恢复正常请求"),
        LogLang::En => format!("🟢 Circuit breaker of {subject} closed, traffic resumes"),
    }
}

/// 🏥 Health status change.
pub fn health_changed(lang: LogLang, account: &str, from: &str, to: &str) -> String {
    match lang {
        LogLang::Zh => format!("🏥 账号 {account} 健康状态变化: {from} -> {to}"),
        LogLang::En => format!("🏥 Account {account} health changed: {from} -> {to}"),
    }
}

/// ⚠️ Temporarily disabled.
pub fn temporarily_disabled(lang: LogLang, account: &str, until_rfc3339: &str) -> String {
    match lang {
        LogLang::Zh => format!("⚠️ 账号 {account} 因连续失败被临时禁用至 {until_rfc3339}"),
        LogLang::En => format!(
            "⚠️ Account {account} temporarily disabled until {until_rfc3339} after repeated failures"
        ),
    }
}

/// ⛔ Disabled for a reason (auth, billing, operator).
pub fn disabled(lang: LogLang, account: &str, reason: &str) -> String {
    match lang {
        LogLang::Zh => format!("⛔ 账号 {account} 已禁用，原因: {reason}"),
        LogLang::En => format!("⛔ Account {account} disabled: {reason}"),
    }
}

/// 🧊 Cooling down after a rate limit.
pub fn cooling_down(lang: LogLang, account: &str, until_rfc3339: &str) -> String {
    match lang {
        LogLang::Zh => format!("🧊 账号 {account} 被限流，冷却至 {until_rfc3339}"),
        LogLang::En => {
            format!("🧊 Account {account} rate-limited, cooling down until {until_rfc3339}")
        }
    }
}

/// ✅ A recovery probe brought an account back.
pub fn recovered(lang: LogLang, account: &str) -> String {
    match lang {
        LogLang::Zh => format!("✅ 账号 {account} 恢复检测成功，重新启用"),
        LogLang::En => {
            format!("✅ Account {account} passed its recovery probe and is enabled again")
        }
    }
}

/// 🔍 A recovery probe failed.
pub fn probe_failed(lang: LogLang, account: &str, reason: &str) -> String {
    match lang {
        LogLang::Zh => format!("🔍 账号 {account} 恢复检测失败: {reason}"),
        LogLang::En => format!("🔍 Account {account} failed its recovery probe: {reason}"),
    }
}

/// 🔑 OAuth token refreshed.
pub fn token_refreshed(lang: LogLang, account: &str) -> String {
    match lang {
        LogLang::Zh => format!("🔑 账号 {account} OAuth令牌已刷新"),
        LogLang::En => format!("🔑 Account {account} OAuth token refreshed"),
    }
}

/// 🔑 OAuth refresh failed.
pub fn token_refresh_failed(lang: LogLang, account: &str, reason: &str) -> String {
    match lang {
        LogLang::Zh => format!("🔑 账号 {account} OAuth令牌刷新失败: {reason}"),
        LogLang::En => format!("🔑 Account {account} OAuth token refresh failed: {reason}"),
    }
}

/// ⚡ A stream broke after it had started.
pub fn stream_broken(lang: LogLang, account: &str, reason: &str) -> String {
    match lang {
        LogLang::Zh => format!("⚡ 账号 {account} 流式响应中断: {reason}"),
        LogLang::En => format!("⚡ Account {account} stream broke mid-way: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_success_line_reads_as_the_seed_wrote_it_in_both_languages() {
        let took = Duration::from_millis(1_260);
        assert_eq!(
            attempt_succeeded(LogLang::Zh, "acct-1", took).to_string(),
            "✅ 账号 acct-1 请求成功，耗时: 1.3s"
        );
        assert_eq!(
            attempt_succeeded(LogLang::En, "acct-1", took).to_string(),
            "✅ Account acct-1 succeeded in 1.3s"
        );
        for (millis, written) in [
            (0, "0.0s"),
            (49, "0.0s"),
            (50, "0.1s"),
            (999, "1.0s"),
            (61_440, "61.4s"),
        ] {
            let line =
                attempt_succeeded(LogLang::En, "a", Duration::from_millis(millis)).to_string();
            assert!(
                line.ends_with(&format!(" in {written}")),
                "{millis}: {line}"
            );
        }
    }
}
