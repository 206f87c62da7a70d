//! Distinct values of a field: a HyperLogLog of 2 048 registers (`simple_hll`, Ertl's
//! improved estimator; standard error 1.04 / √2048 ≈ 2.3 %), fed with the values' xxh3
//! hashes.
//!
//! Stored as its non-zero registers while at most a third are set, else all of them;
//! a stored form of the wrong size or with an out-of-range register is refused (an
//! error, not a panic), so a damaged checkpoint makes the fingerprint count again.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use simple_hll::HyperLogLog;

/// log₂ of the number of registers.
const P: usize = 11;
const REGISTERS: usize = 1 << P;
/// A register holds the position of the first one bit in 64 − P bits, plus one.
const REGISTER_MAX: u8 = (64 - P + 1) as u8;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Distinct(HyperLogLog<P>);

impl Distinct {
    pub(crate) fn add_hash(&mut self, hash: u64) {
        self.0.add_hash(hash);
    }

    pub(crate) fn estimate(&self) -> u64 {
        self.0.count() as u64
    }
}

#[derive(Serialize, Deserialize)]
enum Stored {
    /// (index, value) of the non-zero registers.
    Sparse(Vec<(u16, u8)>),
    Full(Vec<u8>),
}

impl Serialize for Distinct {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let registers = self.0.get_registers();
        let set = REGISTERS - self.0.num_empty_registers();
        if set * 3 <= REGISTERS {
            let pairs = registers
                .iter()
                .enumerate()
                .filter(|(_, &r)| r != 0)
                .map(|(i, &r)| (i as u16, r))
                .collect();
            Stored::Sparse(pairs).serialize(s)
        } else {
            Stored::Full(registers.to_vec()).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Distinct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let registers = match Stored::deserialize(d)? {
            Stored::Full(registers) => {
                if registers.len() != REGISTERS {
                    return Err(de::Error::invalid_length(
                        registers.len(),
                        &"2048 registers",
                    ));
                }
                registers
            }
            Stored::Sparse(pairs) => {
                let mut registers = vec![0; REGISTERS];
                for (i, r) in pairs {
                    let slot = registers
                        .get_mut(i as usize)
                        .ok_or_else(|| de::Error::custom(format!("register {i} of 2048")))?;
                    *slot = r;
                }
                registers
            }
        };
        if let Some(r) = registers.iter().find(|&&r| r > REGISTER_MAX) {
            return Err(de::Error::custom(format!(
                "register value {r} past {REGISTER_MAX}"
            )));
        }
        Ok(Distinct(HyperLogLog::with_registers(registers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_stored_forms_are_errors() {
        for bad in [
            r#"{"Full":[1,2,3]}"#,
            r#"{"Sparse":[[2048,1]]}"#,
            r#"{"Sparse":[[3,60]]}"#,
        ] {
            assert!(serde_json::from_str::<Distinct>(bad).is_err(), "{bad}");
        }
        let mut d = Distinct::default();
        for i in 0..100u64 {
            d.add_hash(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
        }
        let back: Distinct = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        for i in 100..10_000u64 {
            d.add_hash(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
        }
        let back: Distinct = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }
}
