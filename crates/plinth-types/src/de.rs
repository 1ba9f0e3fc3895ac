//! Deserializers for settings written in plinth's configuration file: durations as whole
//! seconds or milliseconds (`lease_secs = 30`, `timeout_ms = 1000`), and counts where 0 means
//! "no limit". The settings types of the crates that use them (`#[serde(deserialize_with)]`)
//! are what the configuration deserializes into.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as whole seconds.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// A duration written as whole milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// A limit where 0 means none.
pub fn zero_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    usize::deserialize(d).map(|n| (n > 0).then_some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct S {
        #[serde(deserialize_with = "secs")]
        a: Duration,
        #[serde(deserialize_with = "millis")]
        b: Duration,
        #[serde(deserialize_with = "zero_is_none")]
        c: Option<usize>,
        #[serde(deserialize_with = "zero_is_none")]
        d: Option<usize>,
    }

    #[test]
    fn units_and_zero() {
        let s: S = serde_json::from_str(r#"{"a": 3, "b": 250, "c": 0, "d": 7}"#).unwrap();
        assert_eq!(s.a, Duration::from_secs(3));
        assert_eq!(s.b, Duration::from_millis(250));
        assert_eq!((s.c, s.d), (None, Some(7)));
        let e = serde_json::from_str::<S>(r#"{"a": -1, "b": 1, "c": 0, "d": 0}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("invalid value"), "{e}");
    }
}
