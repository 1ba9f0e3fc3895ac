//! Making a driver for one BMC: a [`BmcTarget`] (protocol, address, credentials as the
//! inventory holds them) becomes a Redfish or IPMI [`Bmc`]. The job workers of plinth-core ask
//! a [`Connector`] for each BMC they call; [`Drivers`] is the real one, and a test substitutes
//! its own (one that hands out `fake::FakeBmc`s) through the same trait.
//!
//! How an address is read is decided here once: `host[:port]` is HTTPS for Redfish and UDP 623
//! for IPMI unless it names a port; a full `http(s)://` URL is a Redfish base URL as it is.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use plinth_types::api::BmcProtocol;
use uuid::Uuid;

use crate::{Bmc, BmcError, ipmi, redfish};

/// How to reach one machine's BMC, with its password decrypted for the call.
#[derive(Clone)]
pub struct BmcTarget {
    /// The machine the BMC belongs to (for logs, and for tests' connectors to find their fake).
    pub machine_id: Uuid,
    pub protocol: BmcProtocol,
    pub address: String,
    pub username: String,
    pub password: String,
    pub verify_tls: bool,
    /// The BMC's opt-in to plain http:// Redfish.
    pub plain_http: bool,
}

impl BmcTarget {
    /// The same BMC and account with another password (a rotation's new one, proved by a
    /// session of its own).
    pub fn with_password(&self, password: &str) -> BmcTarget {
        BmcTarget {
            password: password.to_owned(),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for BmcTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcTarget")
            .field("machine_id", &self.machine_id)
            .field("protocol", &self.protocol)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Makes a driver for a BMC. [`Drivers`] makes the real ones; tests substitute their own.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(
        &'a self,
        target: &'a BmcTarget,
    ) -> BoxFuture<'a, std::result::Result<Arc<dyn Bmc>, BmcError>>;

    /// Activates Serial over LAN on an IPMI endpoint (`target.protocol` is IPMI: a Redfish
    /// BMC's console is reached through the IPMI endpoint recorded for it). A connector that
    /// has no consoles refuses.
    fn sol<'a>(
        &'a self,
        target: &'a BmcTarget,
    ) -> BoxFuture<'a, std::result::Result<ipmi::sol::SolSession, BmcError>> {
        Box::pin(async move {
            Err(BmcError::Unsupported(format!(
                "no serial console through this connector ({})",
                target.address
            )))
        })
    }
}

/// The longest one BMC call may take, unless `bmc.call_timeout_secs` says otherwise: the
/// drivers' per-request timeout, and the job runner's and the power sync's per call (a
/// Redfish call can take 30 s on a busy BMC).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The Redfish and IPMI drivers, with the settings every BMC shares; `[bmc]`'s driver keys
/// deserialize into this.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Drivers {
    /// Per HTTP request (Redfish) or per datagram attempt (IPMI, at most 2 s).
    #[serde(
        rename = "call_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub timeout: Duration,
    /// IPMI datagrams are sent `ipmi_retries + 1` times before the BMC counts as unreachable.
    pub ipmi_retries: u32,
    /// PEM CA certificates trusted for Redfish BMCs whose certificate is verified (read from
    /// `bmc.ca_file`).
    #[serde(skip)]
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for Drivers {
    fn default() -> Self {
        Drivers {
            timeout: DEFAULT_CALL_TIMEOUT,
            ipmi_retries: 3,
            ca_pem: None,
        }
    }
}

/// The Redfish base URL of a BMC address: `host[:port]` means HTTPS; a full `http(s)://` URL
/// is taken as it is.
fn redfish_base_url(address: &str) -> String {
    if address.starts_with("https://") || address.starts_with("http://") {
        address.trim_end_matches('/').to_owned()
    } else {
        format!("https://{address}")
    }
}

/// The `host:port` of an IPMI BMC address: port 623 unless the address names one (an IPv6
/// address names its port after its brackets).
fn ipmi_host_port(address: &str) -> String {
    let has_port = if address.starts_with('[') {
        address.contains("]:")
    } else {
        address.contains(':')
    };
    if has_port {
        address.to_owned()
    } else {
        format!("{address}:623")
    }
}

impl Drivers {
    fn redfish(&self, t: &BmcTarget) -> Result<Arc<dyn Bmc>, BmcError> {
        let r = redfish::Redfish::new(redfish::RedfishConfig {
            base_url: redfish_base_url(&t.address),
            username: t.username.clone(),
            password: t.password.clone(),
            verify_tls: t.verify_tls,
            allow_plain_http: t.plain_http,
            ca_pem: self.ca_pem.clone(),
            system: None,
            timeout: self.timeout,
        })?;
        Ok(Arc::new(r))
    }

    async fn ipmi(&self, t: &BmcTarget) -> Result<Arc<dyn Bmc>, BmcError> {
        Ok(Arc::new(self.ipmi_driver(t).await?))
    }

    async fn ipmi_driver(&self, t: &BmcTarget) -> Result<ipmi::Ipmi, BmcError> {
        let addr = tokio::net::lookup_host(ipmi_host_port(&t.address))
            .await
            .map_err(|e| BmcError::Unreachable(format!("cannot resolve {}: {e}", t.address)))?
            .next()
            .ok_or_else(|| BmcError::Unreachable(format!("{} has no address", t.address)))?;
        let i = ipmi::Ipmi::strongest(ipmi::lan::IpmiConfig {
            addr,
            username: t.username.clone(),
            password: t.password.clone(),
            timeout: self.timeout.min(Duration::from_secs(2)),
            retries: self.ipmi_retries,
            // 17 where the BMC offers it, else 3
            cipher_suite: ipmi::CipherSuite::Seventeen,
        });
        Ok(i)
    }
}

impl Connector for Drivers {
    fn connect<'a>(
        &'a self,
        t: &'a BmcTarget,
    ) -> BoxFuture<'a, std::result::Result<Arc<dyn Bmc>, BmcError>> {
        Box::pin(async move {
            match t.protocol {
                BmcProtocol::Redfish => self.redfish(t),
                BmcProtocol::Ipmi => self.ipmi(t).await,
            }
        })
    }

    fn sol<'a>(
        &'a self,
        t: &'a BmcTarget,
    ) -> BoxFuture<'a, std::result::Result<ipmi::sol::SolSession, BmcError>> {
        Box::pin(async move {
            if t.protocol != BmcProtocol::Ipmi {
                return Err(BmcError::Unsupported(
                    "a serial console is reached over IPMI only".into(),
                ));
            }
            self.ipmi_driver(t).await?.activate_sol().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(redfish_base_url("10.1.0.21"), "https://10.1.0.21");
        assert_eq!(redfish_base_url("bmc-7:8443"), "https://bmc-7:8443");
        assert_eq!(
            redfish_base_url("http://127.0.0.1:8000/"),
            "http://127.0.0.1:8000"
        );
        assert_eq!(ipmi_host_port("10.1.0.21"), "10.1.0.21:623");
        assert_eq!(ipmi_host_port("10.1.0.21:6230"), "10.1.0.21:6230");
        assert_eq!(ipmi_host_port("[fd00::21]"), "[fd00::21]:623");
        assert_eq!(ipmi_host_port("[fd00::21]:6230"), "[fd00::21]:6230");
    }

    #[tokio::test]
    async fn a_target_becomes_its_protocol_s_driver() {
        let target = |protocol, address: &str| BmcTarget {
            machine_id: Uuid::nil(),
            protocol,
            address: address.into(),
            username: "admin".into(),
            password: "secret".into(),
            verify_tls: false,
            plain_http: false,
        };
        let d = Drivers::default();
        // Plain http:// Redfish without the BMC's opt-in is refused before anything is sent.
        let refused = d
            .connect(&target(BmcProtocol::Redfish, "http://127.0.0.1:1"))
            .await;
        assert!(
            matches!(refused, Err(BmcError::Unsupported(_))),
            "plain http without the opt-in"
        );
        let mut opted_in = target(BmcProtocol::Redfish, "http://127.0.0.1:1");
        opted_in.plain_http = true;
        assert!(d.connect(&opted_in).await.is_ok());
        // An IPMI name that does not resolve is an unreachable BMC (retried), not a crash.
        let e = d
            .connect(&target(BmcProtocol::Ipmi, "no-such-bmc.invalid"))
            .await
            .err()
            .expect("an unresolvable name fails");
        assert!(matches!(e, BmcError::Unreachable(_)), "{e}");
        assert!(
            format!("{:?}", target(BmcProtocol::Ipmi, "x")).contains("<redacted>"),
            "the password never shows in Debug"
        );
    }
}
