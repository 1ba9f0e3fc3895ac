//! Finding BMCs on a BMC network (issue 21, part 4: `plinth bmc scan`): one address and port
//! at a time, as plinth-core's scanner asks. Redfish: an unauthenticated `GET /redfish/v1/`
//! (HTTPS, then plain HTTP), then the factory credentials in turn through the Redfish driver
//! for the system's serial, UUID and NIC MACs. IPMI: a session with each factory credential
//! (the RMCP+ exchange answers "unauthorized name/password" without one, which is enough to
//! know an IPMI BMC is there), then identity (FRU serial, system GUID).
//!
//! Nothing here decides which addresses are probed; each probe talks to the one address and
//! port it is given, with short timeouts, follows no redirect, and never reports a password:
//! only which of the credentials (by its index) worked.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

use crate::redfish::{Redfish, RedfishConfig};
use crate::{Bmc, BmcError, Identity, ipmi};

/// A user name and password a vendor ships its BMCs with.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryCredential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for FactoryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactoryCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `redfish` or `ipmi`.
    pub protocol: &'static str,
    /// How plinth would reach it: a Redfish base URL, or `ip:port` for IPMI.
    pub address: String,
    pub vendor: Option<String>,
    /// The index of the factory credential that logged in, if one did.
    pub credential: Option<usize>,
    pub identity: Option<Identity>,
}

fn host(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// A Redfish service at `ip:port`, over HTTPS or else plain HTTP.
pub async fn redfish(
    ip: IpAddr,
    port: u16,
    creds: &[FactoryCredential],
    timeout: Duration,
) -> Option<Found> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        // discovery: factory BMCs have self-signed certificates
        .danger_accept_invalid_certs(true)
        .build()
        .ok()?;
    for scheme in ["https", "http"] {
        let base = format!("{scheme}://{}", host(ip, port));
        let Some(root) = service_root(&http, &base).await else {
            continue;
        };
        if root.get("RedfishVersion").is_none() && root.get("@odata.id").is_none() {
            continue;
        }
        let vendor = root
            .get("Vendor")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                root.get("Oem")
                    .and_then(Value::as_object)
                    .and_then(|o| o.keys().next().cloned())
            });
        let mut found = Found {
            protocol: "redfish",
            address: base.clone(),
            vendor,
            credential: None,
            identity: None,
        };
        for (i, c) in creds.iter().enumerate() {
            let Ok(r) = Redfish::new(RedfishConfig {
                base_url: base.clone(),
                username: c.username.clone(),
                password: c.password.clone(),
                verify_tls: false,
                ca_pem: None,
                system: None,
                timeout,
                allow_plain_http: scheme == "http",
            }) else {
                continue;
            };
            let id = r.identity().await;
            r.close().await;
            match id {
                Ok(id) => {
                    found.credential = Some(i);
                    found.identity = Some(id);
                    break;
                }
                Err(BmcError::Auth) => continue,
                Err(_) => break,
            }
        }
        return Some(found);
    }
    None
}

/// The unauthenticated service root at `base`: `/redfish/v1/` as the specification names it,
/// or `/redfish/v1` where a BMC serves only that (no redirect is followed). `None` when the
/// connection fails (a TLS handshake with a plain HTTP server, nothing listening) or the
/// answer is not a Redfish service root.
async fn service_root(http: &reqwest::Client, base: &str) -> Option<Value> {
    for path in ["/redfish/v1/", "/redfish/v1"] {
        let resp = http.get(format!("{base}{path}")).send().await.ok()?;
        if !resp.status().is_success()
            || resp
                .content_length()
                .is_some_and(|n| n > crate::redfish::MAX_BODY as u64)
        {
            continue;
        }
        let bytes = resp.bytes().await.ok()?;
        if bytes.len() > crate::redfish::MAX_BODY {
            return None;
        }
        let root: Value = serde_json::from_slice(&bytes).ok()?;
        if root.get("RedfishVersion").is_some() || root.get("@odata.id").is_some() {
            return Some(root);
        }
    }
    None
}

/// An IPMI BMC at `ip:port` (UDP).
pub async fn ipmi(
    ip: IpAddr,
    port: u16,
    creds: &[FactoryCredential],
    timeout: Duration,
) -> Option<Found> {
    let addr = SocketAddr::new(ip, port);
    let mut found = Found {
        protocol: "ipmi",
        address: addr.to_string(),
        vendor: None,
        credential: None,
        identity: None,
    };
    let mut answered = false;
    // Without credentials a throw-away user name still gets an answer from a BMC.
    let probe = [FactoryCredential {
        username: "plinth-probe".into(),
        password: "plinth-probe".into(),
    }];
    let list: &[FactoryCredential] = if creds.is_empty() { &probe } else { creds };
    for (i, c) in list.iter().enumerate() {
        let bmc = ipmi::Ipmi::strongest(ipmi::IpmiConfig {
            addr,
            username: c.username.clone(),
            password: c.password.clone(),
            timeout,
            retries: 1,
            cipher_suite: ipmi::CipherSuite::Seventeen,
        });
        let id = bmc.identity().await;
        bmc.close().await;
        match id {
            Ok(id) if !creds.is_empty() => {
                found.credential = Some(i);
                found.vendor = id.manufacturer.clone();
                found.identity = Some(id);
                return Some(found);
            }
            Ok(_) => return Some(found),
            Err(BmcError::Timeout | BmcError::Unreachable(_)) => {
                if !answered {
                    return None;
                }
            }
            Err(_) => answered = true,
        }
    }
    answered.then_some(found)
}
