//! One `[section]` of the file, deserialized into the settings types of the crates it
//! configures. A section is flat (`[bmc]` holds the job runner's, the power sync's and the
//! drivers' keys side by side), so each part takes the keys its type knows (a key two parts
//! share, like `bmc.call_timeout_secs`, goes to both) and a key no part knows is an error
//! naming the section and every key it accepts. Each type keeps its own defaults for the keys
//! the file leaves out (`#[serde(default)]` on it).

use std::collections::BTreeSet;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Visitor};

/// The keys a derived `Deserialize` struct accepts (its fields' names as renamed; skipped
/// fields are not among them), read from what the derive hands `deserialize_struct`.
pub(crate) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The `enabled` key of a section whose server is off unless it says so.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Switch {
    pub(crate) enabled: bool,
}

/// A section's table, handed out part by part.
pub(crate) struct Section<E> {
    name: &'static str,
    table: toml::Table,
    taken: BTreeSet<String>,
    accepted: BTreeSet<&'static str>,
    error: PhantomData<E>,
}

impl<E: serde::de::Error> Section<E> {
    pub(crate) fn read<'de, D: Deserializer<'de, Error = E>>(
        name: &'static str,
        d: D,
    ) -> Result<Section<E>, E> {
        Ok(Section {
            name,
            table: toml::Table::deserialize(d)?,
            taken: BTreeSet::new(),
            accepted: BTreeSet::new(),
            error: PhantomData,
        })
    }

    /// The part of the section `T` knows, with `T`'s defaults for what the file leaves out.
    pub(crate) fn part<T: DeserializeOwned>(&mut self) -> Result<T, E> {
        let keys = keys_of::<T>();
        self.accepted.extend(keys);
        let mut mine = toml::Table::new();
        for key in keys {
            if let Some(v) = self.table.get(*key) {
                mine.insert((*key).to_owned(), v.clone());
                self.taken.insert((*key).to_owned());
            }
        }
        T::deserialize(toml::Value::Table(mine.clone())).map_err(|e| {
            // Name the key at fault: the first that fails on its own.
            let culprit = mine.iter().find(|(k, v)| {
                let alone = toml::Table::from_iter([((*k).clone(), (*v).clone())]);
                T::deserialize(toml::Value::Table(alone)).is_err()
            });
            match culprit {
                Some((k, _)) => E::custom(format_args!("{}.{k}: {}", self.name, e.message())),
                None => E::custom(format_args!("[{}]: {}", self.name, e.message())),
            }
        })
    }

    /// Every key was some part's; otherwise the error names the first that was not.
    pub(crate) fn finish(self) -> Result<(), E> {
        match self.table.keys().find(|k| !self.taken.contains(*k)) {
            None => Ok(()),
            Some(k) => Err(E::custom(format_args!(
                "unknown field `{k}` in [{}], expected one of {}",
                self.name,
                self.accepted
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct A {
        x: u32,
        #[serde(rename = "shared_secs")]
        s: u64,
        #[serde(skip)]
        hidden: u8,
    }
    impl Default for A {
        fn default() -> Self {
            A {
                x: 1,
                s: 2,
                hidden: 9,
            }
        }
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct B {
        shared_secs: u64,
        y: String,
    }

    fn parts(text: &str) -> Result<(A, B), toml::de::Error> {
        let mut s = Section::read("t", toml::from_str::<toml::Value>(text).unwrap())?;
        let a = s.part()?;
        let b = s.part()?;
        s.finish()?;
        Ok((a, b))
    }

    #[test]
    fn keys_are_the_renamed_unskipped_fields() {
        assert_eq!(keys_of::<A>(), ["x", "shared_secs"]);
    }

    #[test]
    fn shared_keys_go_to_each_part_and_defaults_are_the_types() {
        let (a, b) = parts("shared_secs = 5\ny = \"z\"").unwrap();
        assert_eq!(
            a,
            A {
                x: 1,
                s: 5,
                hidden: 9
            }
        );
        assert_eq!(b.shared_secs, 5);
        assert_eq!(b.y, "z");
    }

    #[test]
    fn an_unknown_key_is_named_with_what_is_accepted() {
        let e = parts("x = 1\nwhy = 2").unwrap_err().to_string();
        assert!(
            e.contains("unknown field `why` in [t], expected one of `shared_secs`, `x`, `y`"),
            "{e}"
        );
        let e = parts("y = \"ok\"\nx = \"one\"").unwrap_err().to_string();
        assert!(e.contains("t.x: invalid type: string \"one\""), "{e}");
    }
}
