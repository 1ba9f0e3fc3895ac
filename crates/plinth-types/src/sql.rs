//! How the vocabulary is stored in PostgreSQL (feature `sqlx`, enabled by plinth-db only):
//! the enums as the `text` their `as_str` spells (the schema's check constraints list the same
//! words), a MAC as `macaddr`. plinth-db reads and binds these types, so a state or a role
//! crosses the database boundary typed, and a word the code does not know fails there, once,
//! as a decode error naming the value.
//!
//! Still no I/O here: these are conversions between bytes and values.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use crate::MacAddr;

/// A `text` column holding one of an enum's words.
macro_rules! text_column {
    ($($t:ty),* $(,)?) => {$(
        impl Type<Postgres> for $t {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Postgres> for $t {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as Decode<Postgres>>::decode(value)?;
                s.parse::<$t>().map_err(|e| {
                    format!("{} in the database: {e}", stringify!($t)).into()
                })
            }
        }

        impl Encode<'_, Postgres> for $t {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }
    )*};
}

text_column!(
    crate::MachineState,
    crate::Verb,
    crate::Role,
    crate::AgentMode,
    crate::api::BmcProtocol,
    crate::api::Arch,
    crate::api::BootMethod,
    crate::api::WipeMethod,
    crate::api::ImageKind,
    crate::api::JobState,
    crate::api::LeaseState,
);

/// `macaddr`: six bytes on the wire (PostgreSQL's binary format).
impl Type<Postgres> for MacAddr {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("macaddr")
    }
}

impl sqlx::postgres::PgHasArrayType for MacAddr {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("_macaddr")
    }
}

impl<'r> Decode<'r, Postgres> for MacAddr {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            sqlx::postgres::PgValueFormat::Binary => {
                let b = value.as_bytes()?;
                let o: [u8; 6] = b
                    .try_into()
                    .map_err(|_| format!("macaddr of {} bytes", b.len()))?;
                Ok(MacAddr(o))
            }
            sqlx::postgres::PgValueFormat::Text => {
                let s = value.as_str()?;
                MacAddr::parse_any(s).ok_or_else(|| format!("macaddr {s:?}").into())
            }
        }
    }
}

impl Encode<'_, Postgres> for MacAddr {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
}
