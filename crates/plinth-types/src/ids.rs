//! Typed ids for the rows that are easy to mix up: a function that takes a machine, an
//! allocation and an image says so in its signature, and passing one for another does not
//! compile. Each is a UUID on the wire and in the database (`#[serde(transparent)]`, and the
//! `sqlx` feature's transparent column type).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                $name(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    )*};
}

typed_id! {
    /// A machine of the inventory.
    MachineId;
    /// An allocation: machines handed to one client together.
    AllocationId;
    /// An image of the catalog.
    ImageId;
    /// A BMC job.
    JobId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_on_the_wire() {
        let u = Uuid::from_u128(0x4c4c4544_0000_1000_8000_000000000007);
        let id = MachineId(u);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{u}\""));
        assert_eq!(id.to_string().parse::<MachineId>().unwrap(), id);
        assert_eq!(
            serde_json::from_str::<ImageId>(&format!("\"{u}\"")).unwrap(),
            ImageId(u)
        );
    }
}
