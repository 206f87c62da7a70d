//! Fingerprints: summary statistics of a topic's events per event-time bucket, so that
//! two versions of a computation (or a topic today and yesterday) can be compared by
//! numbers rather than by eye.
//!
//! Per bucket: the events counted; per top-level field (up to `fields_max` fields, the
//! first seen): how many events have it non-null (so nulls = count − that, absent
//! counted as null), an estimate of its distinct values (HyperLogLog, about 2 % error),
//! for numbers their count, min, max and mean, and for the fields named in `entropy`
//! the Shannon entropy of their values ([`entropy`]: exact up to 1 024 distinct values,
//! then estimated with bounds). A field's value is taken by its JSON text (a string by
//! its contents); objects and arrays count as values too.
//!
//! A [`Bucket`] is plain data (serde), so its state can be written beside the position
//! it reflects and read back after a crash: recounting is never needed.
#![forbid(unsafe_code)]

mod distinct;
pub mod entropy;
mod fields;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use distinct::Distinct;

pub use entropy::Entropy;
pub use fields::{for_each_field, Value};

/// What to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Most fields tracked per bucket (the first seen); occurrences of others are
    /// counted in `untracked`.
    pub fields_max: usize,
    /// Fields whose entropy is computed.
    pub entropy: Vec<String>,
}

/// One bucket's statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bucket {
    /// Events counted.
    pub count: u64,
    /// Events whose value is not a JSON object (they have no fields).
    pub not_objects: u64,
    /// Occurrences of fields past `fields_max`.
    pub untracked: u64,
    fields: BTreeMap<String, Field>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Field {
    non_null: u64,
    distinct: Distinct,
    numbers: Option<Numbers>,
    entropy: Option<entropy::Counts>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Numbers {
    n: u64,
    min: f64,
    max: f64,
    sum: f64,
}

/// A bucket as served and compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub not_objects: u64,
    pub untracked: u64,
    pub fields: BTreeMap<String, FieldSummary>,
}

/// One field of a bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSummary {
    /// Events without the field or with it null.
    pub nulls: u64,
    /// `nulls` / the bucket's count.
    pub null_rate: f64,
    /// Estimated distinct non-null values.
    pub distinct: u64,
    /// Of its numeric values: how many, least, greatest, mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numbers: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// For fields named in `entropy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
}

impl Bucket {
    /// Counts one event given its JSON value (an event's data).
    pub fn add(&mut self, json: &[u8], settings: &Settings) {
        self.count += 1;
        let is_object = for_each_field(json, |name, value| self.add_field(name, value, settings));
        if !is_object {
            self.not_objects += 1;
        }
    }

    fn add_field(&mut self, name: &str, value: Value<'_>, settings: &Settings) {
        if matches!(value, Value::Null) {
            return;
        }
        let full = self.fields.len() >= settings.fields_max;
        let field = match self.fields.get_mut(name) {
            Some(f) => f,
            None if full => {
                self.untracked += 1;
                return;
            }
            None => self.fields.entry(name.to_owned()).or_insert_with(|| Field {
                non_null: 0,
                distinct: Distinct::default(),
                numbers: None,
                entropy: settings
                    .entropy
                    .iter()
                    .any(|e| e == name)
                    .then(Default::default),
            }),
        };
        field.non_null += 1;
        let text = value.text();
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        field.distinct.add_hash(hash);
        if let Some(e) = &mut field.entropy {
            e.add(hash);
        }
        if let Value::Number(x, _) = value {
            let n = field.numbers.get_or_insert(Numbers {
                n: 0,
                min: x,
                max: x,
                sum: 0.0,
            });
            n.n += 1;
            n.min = n.min.min(x);
            n.max = n.max.max(x);
            n.sum += x;
        }
    }

    /// The bucket's figures.
    pub fn summary(&self) -> Summary {
        let fields = self
            .fields
            .iter()
            .map(|(name, f)| {
                let nulls = self.count.saturating_sub(f.non_null);
                let distinct = f.distinct.estimate();
                let numbers = f.numbers;
                (
                    name.clone(),
                    FieldSummary {
                        nulls,
                        null_rate: if self.count == 0 {
                            0.0
                        } else {
                            nulls as f64 / self.count as f64
                        },
                        distinct,
                        numbers: numbers.map(|n| n.n),
                        min: numbers.map(|n| n.min),
                        max: numbers.map(|n| n.max),
                        mean: numbers.map(|n| n.sum / n.n as f64),
                        entropy: f.entropy.as_ref().map(|e| e.entropy(distinct as f64)),
                    },
                )
            })
            .collect();
        Summary {
            count: self.count,
            not_objects: self.not_objects,
            untracked: self.untracked,
            fields,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            fields_max: 3,
            entropy: vec!["country".into()],
        }
    }

    #[test]
    fn counts_nulls_numbers_and_entropy_exactly() {
        let mut b = Bucket::default();
        let s = settings();
        for (i, country) in ["de", "de", "fr", "us"].iter().enumerate() {
            let e = format!(
                r#"{{"id": "e{i}", "country": "{country}", "amount": {}}}"#,
                i * 10
            );
            b.add(e.as_bytes(), &s);
        }
        b.add(
            br#"{"id": "e4", "country": null, "amount": -2.5, "extra": 1}"#,
            &s,
        );
        b.add(b"[1, 2]", &s);
        let sum = b.summary();
        assert_eq!((sum.count, sum.not_objects, sum.untracked), (6, 1, 1));
        let country = &sum.fields["country"];
        assert_eq!((country.nulls, country.distinct), (2, 3));
        assert!((country.null_rate - 2.0 / 6.0).abs() < 1e-12);
        let e = country.entropy.unwrap();
        assert!(e.exact && (e.bits - 1.5).abs() < 1e-12, "{e:?}");
        let amount = &sum.fields["amount"];
        assert_eq!(amount.numbers, Some(5));
        assert_eq!((amount.min, amount.max), (Some(-2.5), Some(30.0)));
        assert!((amount.mean.unwrap() - 57.5 / 5.0).abs() < 1e-12);
        assert_eq!(sum.fields["id"].distinct, 5);
        assert!(sum.fields["id"].entropy.is_none());
        assert!(!sum.fields.contains_key("extra"), "past fields_max");
    }

    #[test]
    fn distinct_estimates_are_within_their_stated_error() {
        // 20 sets of 2 000 to 40 000 distinct values: the root mean square of the
        // relative errors is near 2.3 % with 2 048 registers.
        let s = settings();
        let mut squares = 0.0;
        for set in 0..20 {
            let n = 2_000 + set * 2_000;
            let mut b = Bucket::default();
            for i in 0..n + n / 2 {
                b.add(format!(r#"{{"user": "s{set}-u{}"}}"#, i % n).as_bytes(), &s);
            }
            let d = b.summary().fields["user"].distinct as f64;
            let relative = (d - n as f64) / n as f64;
            assert!(relative.abs() < 0.1, "{d} of {n}");
            squares += relative * relative;
        }
        let rms = (squares / 20.0).sqrt();
        assert!(rms < 0.035, "root mean square error {rms}");
    }

    #[test]
    fn a_bucket_survives_its_stored_form() {
        let mut b = Bucket::default();
        let s = settings();
        for i in 0..2_000 {
            b.add(
                format!(r#"{{"country": "c{}", "n": {i}}}"#, i % 1_300).as_bytes(),
                &s,
            );
        }
        let back: Bucket = serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(back.summary(), b.summary());
    }
}
