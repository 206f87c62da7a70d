//! The PII detector: samples ingested events and counts, per top-level field, values that
//! look like personal data — card numbers (13 to 19 digits passing the Luhn check, with a
//! card-network prefix), email addresses, phone numbers (a whole value of 8 to 15 digits
//! written as a phone number: a leading `+` or separators) and IBANs (passing the ISO
//! 13616 mod-97 check). It keeps counts only, never a value.
//!
//! Bounded: one event in `sample_every` is looked at; in it at most [`STRINGS_PER_EVENT`]
//! strings ([`STRINGS_PER_FIELD`] per field), each up to [`BYTES_PER_STRING`] bytes; at
//! most [`FIELDS_MAX`] field names per source, each up to [`NAME_BYTES_MAX`] bytes (others
//! are counted in `fields_not_tracked`). The regular expressions run in time
//! linear in their input (the `regex` crate), so hostile values cost no more than others.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde::Serialize;

/// Most strings looked at in one sampled event.
pub const STRINGS_PER_EVENT: usize = 512;
/// Bytes of a string looked at (its start).
pub const BYTES_PER_STRING: usize = 1024;
/// Most strings looked at in one field of a sampled event.
pub const STRINGS_PER_FIELD: usize = 64;
/// Most field names counted per source.
pub const FIELDS_MAX: usize = 256;
/// Longest field name counted (longer ones are more likely data used as keys).
pub const NAME_BYTES_MAX: usize = 128;

/// What a value looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A payment card number.
    Card,
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// An international bank account number.
    Iban,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 4] = [Kind::Card, Kind::Email, Kind::Phone, Kind::Iban];

    /// `card`, `email`, `phone`, `iban`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Iban => "iban",
        }
    }
}

/// Counts of one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Sampled events in which the field had a value (not null).
    pub sampled: u64,
    /// Of those, how many had a value of each kind somewhere in the field.
    pub looks_like: BTreeMap<Kind, u64>,
}

impl Counts {
    /// Whether the field looks like PII: some kind in at least 2 sampled values and at
    /// least 5 % of them (a stray match in a free-text field is not enough) — 20 % for
    /// card numbers, which ~5 % of random numeric ids pass (network prefix and Luhn).
    pub fn suspected(&self) -> Vec<Kind> {
        self.looks_like
            .iter()
            .filter(|(k, &n)| {
                let share = if **k == Kind::Card { 5 } else { 20 };
                n >= 2 && n * share >= self.sampled
            })
            .map(|(k, _)| *k)
            .collect()
    }
}

/// What a detector has seen so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Events looked at.
    pub sampled_events: u64,
    /// Per top-level field.
    pub fields: BTreeMap<String, Counts>,
    /// Field names not counted because [`FIELDS_MAX`] were already.
    pub fields_not_tracked: u64,
}

/// One source's detector.
#[derive(Debug)]
pub struct Detector {
    every: u64,
    seen: AtomicU64,
    state: Mutex<Snapshot>,
}

impl Detector {
    /// Looks at one event in `every` (0: none).
    pub fn new(every: u64) -> Self {
        Detector {
            every,
            seen: AtomicU64::new(0),
            state: Mutex::new(Snapshot::default()),
        }
    }

    /// One event in `every` is looked at.
    pub fn sample_every(&self) -> u64 {
        self.every
    }

    /// Counts an ingested event's data (JSON) if it is sampled.
    pub fn observe(&self, data: &[u8]) {
        if self.every == 0
            || !self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.every)
        {
            return;
        }
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(data) else {
            return;
        };
        let mut left = STRINGS_PER_EVENT;
        let mut found: Vec<(String, Vec<Kind>)> = Vec::new();
        for (name, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
            // Each field its own share, so that one large field cannot hide the others; a
            // field not looked at is not counted as sampled.
            if left == 0 {
                break;
            }
            let mut budget = left.min(STRINGS_PER_FIELD);
            let before = budget;
            let mut kinds = Vec::new();
            scan(v, &mut budget, &mut kinds);
            left -= before - budget;
            found.push((name.clone(), kinds));
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.sampled_events += 1;
        for (name, kinds) in found {
            let tracked = s.fields.len();
            let counts = match s.fields.get_mut(&name) {
                Some(c) => c,
                None if tracked < FIELDS_MAX && name.len() <= NAME_BYTES_MAX => {
                    s.fields.entry(name).or_default()
                }
                None => {
                    s.fields_not_tracked += 1;
                    continue;
                }
            };
            counts.sampled += 1;
            for k in kinds {
                *counts.looks_like.entry(k).or_default() += 1;
            }
        }
    }

    /// What it has seen so far.
    pub fn snapshot(&self) -> Snapshot {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Adds the kinds found in `v`'s strings to `kinds` (each once), within `budget` strings.
fn scan(v: &serde_json::Value, budget: &mut usize, kinds: &mut Vec<Kind>) {
    use serde_json::Value;
    match v {
        Value::String(s) if *budget > 0 => {
            *budget -= 1;
            let mut end = s.len().min(BYTES_PER_STRING);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            for k in kinds_in(&s[..end]) {
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
        }
        Value::Array(xs) => xs.iter().for_each(|x| scan(x, budget, kinds)),
        Value::Object(m) => m.values().for_each(|x| scan(x, budget, kinds)),
        _ => {}
    }
}

struct Patterns {
    email: Regex,
    card: Regex,
    iban: Regex,
    phone: Regex,
    date: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("a valid pattern");
        Patterns {
            email: re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"),
            card: re(r"\b\d(?:[ -]?\d){12,18}\b"),
            iban: re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
            phone: re(r"^\+?[0-9(][0-9 ().-]{6,22}[0-9]$"),
            // `2026-12-06`, `06.12.2026`: dates, not phone numbers.
            date: re(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4})$"),
        }
    })
}

/// The kinds of PII a text contains.
pub fn kinds_in(text: &str) -> Vec<Kind> {
    let p = patterns();
    let mut out = Vec::new();
    if p.card.find_iter(text).any(|m| is_card(m.as_str())) {
        out.push(Kind::Card);
    }
    if text.contains('@') && p.email.is_match(text) {
        out.push(Kind::Email);
    }
    if is_phone(text.trim(), &p.phone, &p.date) {
        out.push(Kind::Phone);
    }
    if p.iban.find_iter(text).any(|m| is_iban(m.as_str())) {
        out.push(Kind::Iban);
    }
    out
}

/// 13 to 19 digits (separators ignored) with a card network's prefix and a valid Luhn
/// check digit.
fn is_card(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    // Visa 4, Mastercard 51–55 and 22–27, Amex 34/37, Discover/UnionPay 6, Diners/JCB 3.
    let network = matches!(digits[0], 3..=6) || (digits[0] == 2 && matches!(digits[1], 2..=7));
    network && luhn(&digits)
}

/// The Luhn (mod 10) check.
pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, x) if x > 9 => x - 9,
            (_, x) => x,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: letters to numbers, the first four characters moved to the end, mod 97 = 1.
pub fn is_iban(candidate: &str) -> bool {
    let s: Vec<char> = candidate.chars().filter(|c| *c != ' ').collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for c in s[4..].iter().chain(&s[..4]) {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// A whole value written as a phone number: 8 to 15 digits and either a leading `+` or
/// separators (a bare run of digits is more often an id than a phone number), not a date.
fn is_phone(value: &str, shape: &Regex, date: &Regex) -> bool {
    if !shape.is_match(value) {
        return false;
    }
    let digits = value.chars().filter(char::is_ascii_digit).count();
    let separated = value
        .chars()
        .any(|c| matches!(c, ' ' | '-' | '.' | '(' | ')'));
    // Dotted quads (IPv4) and decimals (`0.12345678`) are neither.
    let dots = value.matches('.').count();
    let number_like =
        value.chars().all(|c| c.is_ascii_digit() || c == '.') && (dots == 1 || dots == 3);
    (8..=15).contains(&digits)
        && (value.starts_with('+') || separated)
        && !date.is_match(value)
        && !number_like
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind_and_not_its_look_alikes() {
        let cases: &[(&str, &[Kind])] = &[
            ("4111 1111 1111 1111", &[Kind::Card]),
            ("card 5500-0000-0000-0004 on file", &[Kind::Card]),
            ("378282246310005", &[Kind::Card]),
            // Luhn fails; or no card network starts with 9.
            ("4111 1111 1111 1112", &[]),
            ("9111111111111117", &[]),
            ("ana@example.com", &[Kind::Email]),
            ("write to ana.b+x@mail.example.co.uk please", &[Kind::Email]),
            ("ana@localhost", &[]),
            ("+49 30 1234567", &[Kind::Phone]),
            ("(555) 123-4567", &[Kind::Phone]),
            ("+14155550100", &[Kind::Phone]),
            ("5551234567", &[]),
            ("2026-12-06", &[]),
            ("192.168.100.10", &[]),
            ("0.12345678", &[]),
            ("06.12.2026", &[]),
            ("GB82 WEST 1234 5698 7654 32", &[Kind::Iban]),
            ("DE89370400440532013000", &[Kind::Iban]),
            ("DE89370400440532013001", &[]),
            ("order 12345 shipped", &[]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(kinds_in(text), want.to_vec(), "{text:?}");
        }
    }

    #[test]
    fn counts_sampled_fields_and_stays_bounded() {
        let d = Detector::new(2);
        for i in 0..10 {
            let e = serde_json::json!({
                "email": format!("user{i}@example.com"),
                "nested": {"deep": ["x", "+49 30 1234567"]},
                "amount": i,
                "gone": null,
            });
            d.observe(e.to_string().as_bytes());
        }
        let s = d.snapshot();
        assert_eq!(s.sampled_events, 5);
        assert_eq!(s.fields["email"].sampled, 5);
        assert_eq!(s.fields["email"].looks_like[&Kind::Email], 5);
        assert_eq!(s.fields["email"].suspected(), vec![Kind::Email]);
        assert_eq!(s.fields["nested"].looks_like[&Kind::Phone], 5);
        assert!(s.fields["amount"].looks_like.is_empty());
        assert!(!s.fields.contains_key("gone"));

        let many = Detector::new(1);
        let wide: serde_json::Map<String, serde_json::Value> = (0..FIELDS_MAX + 10)
            .map(|i| (format!("f{i}"), serde_json::json!("x")))
            .collect();
        many.observe(serde_json::Value::Object(wide).to_string().as_bytes());
        let s = many.snapshot();
        assert_eq!(s.fields.len(), FIELDS_MAX);
        assert_eq!(s.fields_not_tracked, 10);

        let off = Detector::new(0);
        off.observe(br#"{"email":"a@example.com"}"#);
        assert_eq!(off.snapshot().sampled_events, 0);
    }

    #[test]
    fn a_stray_match_is_counted_but_not_suspected() {
        let c = Counts {
            sampled: 100,
            looks_like: BTreeMap::from([(Kind::Email, 1), (Kind::Phone, 5), (Kind::Card, 19)]),
        };
        assert_eq!(c.suspected(), vec![Kind::Phone]);
        let cards = Counts {
            sampled: 100,
            looks_like: BTreeMap::from([(Kind::Card, 20)]),
        };
        assert_eq!(cards.suspected(), vec![Kind::Card]);
    }
}
