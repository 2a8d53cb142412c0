//! Which behaviour each credential gets next.
//!
//! Resolution goes from the most specific statement to the least: the credential's one-shot
//! queue (FIFO), then its default, then the fault its name asks for by convention
//! (`mock-429`, …), then the global default, then a normal answer. A credential's own script
//! therefore always beats its naming convention, and a global default never silences a key
//! that was named to fail.

use std::collections::{HashMap, VecDeque};

use crate::behavior::Behavior;

/// The scripts of one credential.
#[derive(Debug, Default)]
struct CredentialScript {
    one_shot_queue: VecDeque<Behavior>,
    default_behavior: Option<Behavior>,
}

/// Every script of the mock, keyed by credential.
#[derive(Debug, Default)]
pub(crate) struct ScriptBook {
    by_credential: HashMap<String, CredentialScript>,
    global_default: Option<Behavior>,
}

impl ScriptBook {
    pub(crate) fn set_default(&mut self, credential: &str, behavior: Behavior) {
        self.script_mut(credential).default_behavior = Some(behavior);
    }

    pub(crate) fn push(&mut self, credential: &str, behavior: Behavior) {
        self.script_mut(credential)
            .one_shot_queue
            .push_back(behavior);
    }

    pub(crate) fn set_global_default(&mut self, behavior: Behavior) {
        self.global_default = Some(behavior);
    }

    pub(crate) fn clear(&mut self) {
        self.by_credential.clear();
        self.global_default = None;
    }

    /// Decides the behaviour of one request, consuming a queued one-shot if there is one.
    pub(crate) fn next_behavior(&mut self, credential: Option<&str>) -> Behavior {
        if let Some(credential) = credential {
            if let Some(script) = self.by_credential.get_mut(credential) {
                if let Some(one_shot) = script.one_shot_queue.pop_front() {
                    return one_shot;
                }
                if let Some(default_behavior) = &script.default_behavior {
                    return default_behavior.clone();
                }
            }
            if let Some(conventional) = Behavior::from_credential_convention(credential) {
                return conventional;
            }
        }
        self.global_default.clone().unwrap_or(Behavior::Ok)
    }

    fn script_mut(&mut self, credential: &str) -> &mut CredentialScript {
        self.by_credential.entry(credential.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shots_are_consumed_in_order_before_the_default() {
        let mut book = ScriptBook::default();
        book.set_default("a", Behavior::Overloaded);
        book.push("a", Behavior::Unauthorized);
        book.push("a", Behavior::BadRequest);
        assert_eq!(book.next_behavior(Some("a")), Behavior::Unauthorized);
        assert_eq!(book.next_behavior(Some("a")), Behavior::BadRequest);
        assert_eq!(book.next_behavior(Some("a")), Behavior::Overloaded);
        assert_eq!(book.next_behavior(Some("a")), Behavior::Overloaded);
        assert_eq!(book.next_behavior(Some("b")), Behavior::Ok);
    }

    #[test]
    fn scripts_beat_conventions_and_conventions_beat_the_global_default() {
        let mut book = ScriptBook::default();
        book.set_global_default(Behavior::ServerError(502));
        assert_eq!(
            book.next_behavior(Some("key-mock-529")),
            Behavior::Overloaded
        );
        assert_eq!(
            book.next_behavior(Some("plain")),
            Behavior::ServerError(502)
        );
        assert_eq!(book.next_behavior(None), Behavior::ServerError(502));
        book.set_default("key-mock-529", Behavior::Ok);
        assert_eq!(book.next_behavior(Some("key-mock-529")), Behavior::Ok);
        book.clear();
        assert_eq!(
            book.next_behavior(Some("key-mock-529")),
            Behavior::Overloaded
        );
        assert_eq!(book.next_behavior(Some("plain")), Behavior::Ok);
    }
}
