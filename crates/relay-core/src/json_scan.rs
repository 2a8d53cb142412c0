//! Reading the top level of a JSON object without decoding it: member names and the byte
//! spans of their values. Values are stepped over, not validated — nested objects and arrays
//! by counting brackets outside strings, strings by jumping with `memchr` to the next quote
//! or backslash — so a request body or an answer is read for one or two members at a cost
//! far below a full parse. Used where the document is passed on untouched (request-body
//! inspection, the usage of a JSON answer).

use std::ops::Range;

/// The members of a JSON object: each name as written (with its quotes, escapes left as they
/// are) and the span of its value. Stops at the end of the object or at anything it cannot
/// read.
pub(crate) struct Members<'a> {
    bytes: &'a [u8],
    at: Option<usize>,
}

/// Where the object that `bytes` holds opens (its `{`), if it holds one.
pub(crate) fn object_start(bytes: &[u8]) -> Option<usize> {
    let at = skip_space(bytes, 0);
    (bytes.get(at) == Some(&b'{')).then_some(at)
}

impl<'a> Members<'a> {
    pub(crate) fn of(bytes: &'a [u8]) -> Self {
        Members {
            bytes,
            at: object_start(bytes).map(|brace| brace + 1),
        }
    }

    fn read(&self, at: usize) -> Option<(&'a [u8], Range<usize>, Option<usize>)> {
        let bytes = self.bytes;
        let at = skip_space(bytes, at);
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let name_end = string_end(bytes, at)?;
        let colon = skip_space(bytes, name_end);
        if bytes.get(colon) != Some(&b':') {
            return None;
        }
        let start = skip_space(bytes, colon + 1);
        let end = value_end(bytes, start)?;
        let after = skip_space(bytes, end);
        // After the last member (or a malformed one) nothing more is read.
        let next = (bytes.get(after) == Some(&b',')).then_some(after + 1);
        Some((&bytes[at..name_end], start..end, next))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a [u8], Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, value, next) = self.read(self.at?)?;
        self.at = next;
        Some((name, value))
    }
}

/// The value of the member `name` (written with its quotes) when it is the last member of the
/// top-level object, found from the end: what comes before it is never read. `None` when
/// that cannot be told for sure that way (the name is elsewhere, or written otherwise) — the
/// caller then reads the members from the start.
///
/// The last `"name"` in the text is the top-level object's last member when it is a member
/// name (after `{` or `,`, before `:`) and after its value only the object's closing brace is
/// left: a nested object would need one more brace after its own. Inside a string a quote is
/// always escaped (after a backslash), so text that merely mentions the name never passes.
pub(crate) fn last_member(bytes: &[u8], name: &[u8]) -> Option<Range<usize>> {
    // From quote to quote backwards: the last member is near the end, and a search for the
    // whole name from the end was several times slower on short answers. A last member holding
    // more quotes than this is looked for from the start instead.
    const QUOTES_LOOKED_AT: usize = 64;
    let mut before = bytes.len();
    let mut key = None;
    for _ in 0..QUOTES_LOOKED_AT {
        let quote = memchr::memrchr(b'"', &bytes[..before])?;
        if bytes[quote..].starts_with(name) {
            key = Some(quote);
            break;
        }
        before = quote;
    }
    let key = key?;
    // After `{` or `,` (and spaces) the quote is not an escaped one.
    let before = bytes[..key]
        .iter()
        .rev()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))?;
    if !matches!(before, b'{' | b',') {
        return None;
    }
    let colon = skip_space(bytes, key + name.len());
    if bytes.get(colon) != Some(&b':') {
        return None;
    }
    let start = skip_space(bytes, colon + 1);
    let end = value_end(bytes, start)?;
    let close = skip_space(bytes, end);
    (bytes.get(close) == Some(&b'}') && skip_space(bytes, close + 1) == bytes.len())
        .then_some(start..end)
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes
        .get(at)
        .is_some_and(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

/// The index just past the string that starts (with its quote) at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        at += memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes[at] == b'"' {
            return Some(at + 1);
        }
        // A backslash escapes the next byte (the rest of `\uXXXX` is plain hex digits).
        at += 2;
    }
}

/// The index just past the value that starts at `start`.
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    match bytes.get(start)? {
        b'"' => string_end(bytes, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            loop {
                match bytes.get(at)? {
                    b'"' => {
                        at = string_end(bytes, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => {
            let rest = &bytes[start..];
            let len = rest
                .iter()
                .position(|byte| matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (len > 0).then_some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(bytes: &[u8]) -> Vec<(String, String)> {
        Members::of(bytes)
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(&bytes[value]).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_last_member_is_found_from_the_end_only_when_it_is_for_sure() {
        let last = |bytes: &[u8]| {
            last_member(bytes, br#""usage""#)
                .map(|span| String::from_utf8_lossy(&bytes[span]).into_owned())
        };
        assert_eq!(
            last(br#"{"a":1,"usage":{"x":2}}"#).as_deref(),
            Some(r#"{"x":2}"#)
        );
        assert_eq!(
            last(b"{\n  \"a\": [1],\n  \"usage\" : {\"x\": 2}\n}\n").as_deref(),
            Some(r#"{"x": 2}"#)
        );
        assert_eq!(last(br#"{"usage":null}"#).as_deref(), Some("null"));
        for unsure in [
            // Not the last member, or not at the top level.
            &br#"{"usage":{"x":1},"b":2}"#[..],
            br#"{"a":{"usage":{"x":1}}}"#,
            br#"{"a":[{"usage":{"x":1}}]}"#,
            // Mentioned inside a string, as a value, or as an array element.
            br#"{"a":"say \"usage\": {}"}"#,
            br#"{"a":"\\\"usage\": {}"}"#,
            br#"{"a":"\"usage"}"#,
            br#"{"a":"usage"}"#,
            br#"{"a":["usage"]}"#,
            // Cut short, or not an object.
            br#"{"a":1,"usage":{"x":2}"#,
            br#"[{"usage":{"x":2}}]"#,
            b"",
        ] {
            assert_eq!(last(unsure), None, "{}", String::from_utf8_lossy(unsure));
        }
    }

    #[test]
    fn top_level_members_with_their_raw_values() {
        let body =
            br#" { "a" : 1 , "b\"c":"x\\\"}" ,"d":{"e":[1,{"f":"]"}]},"g":null,"h":-2.5e3 } "#;
        let expected = [
            (r#""a""#, "1"),
            (r#""b\"c""#, r#""x\\\"}""#),
            (r#""d""#, r#"{"e":[1,{"f":"]"}]}"#),
            (r#""g""#, "null"),
            (r#""h""#, "-2.5e3"),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        assert_eq!(members(body), expected);
    }

    #[test]
    fn reading_stops_where_the_text_stops_being_an_object() {
        assert!(members(b"[1,2]").is_empty());
        assert!(members(b"not json").is_empty());
        assert!(members(b"{}").is_empty());
        // What was read before a break is kept; nothing after it is invented.
        assert_eq!(members(br#"{"a":1,"b" 2,"c":3}"#).len(), 1);
        assert_eq!(members(br#"{"a":1 "b":2}"#).len(), 1);
        assert_eq!(members(br#"{"a":"unterminated"#).len(), 0);
        assert_eq!(members(br#"{"a":[1,2"#).len(), 0);
    }
}
