//! `[http]`: the listeners (management, provisioning, HTTPS), their TLS, trusted proxies and
//! connection caps.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The management listener: the REST API and the web UI (and, unless `boot.listen` names
    /// another address, the provisioning routes too).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain and private key: the management listener speaks HTTPS only.
    /// Read again on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies (addresses or CIDRs) whose `X-Forwarded-Proto: https` or
    /// `Forwarded: proto=https` is believed; anyone else's is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Open connections per listener; more are refused (503 on plain HTTP) until some close.
    #[serde(default = "default_max_connections_http")]
    pub max_connections: usize,
    /// Open connections from one address per listener.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// Addresses or CIDRs that may read `GET /metrics` without a token (a Prometheus server);
    /// anyone else needs a token that reads the inventory.
    #[serde(default)]
    pub metrics_allow: Vec<String>,
}

pub(crate) fn default_max_connections_http() -> usize {
    plinth_api::ConnLimits::default().total
}

pub(crate) fn default_max_connections_per_peer() -> usize {
    plinth_api::ConnLimits::default().per_peer
}

/// One HTTP listener of `plinth serve`.
#[derive(Debug, Clone)]
pub struct ListenerPlan {
    pub addr: SocketAddr,
    pub surface: plinth_api::Surface,
    /// (certificate, key) PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub limits: plinth_api::ConnLimits,
}

/// Both or neither of a certificate and its key.
pub(crate) fn tls_pair(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("{section}.tls_cert is set but {section}.tls_key is not"),
        (None, Some(_)) => bail!("{section}.tls_key is set but {section}.tls_cert is not"),
    }
}

/// `10.0.0.1`, `fd00::1`, `10.0.0.0/24`.
pub(crate) fn parse_proxy(s: &str) -> anyhow::Result<ipnet::IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| anyhow::anyhow!("http.trusted_proxies: {s:?} is not an address or a CIDR"))
}

pub(crate) fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            max_connections: default_max_connections_http(),
            max_connections_per_peer: default_max_connections_per_peer(),
            metrics_allow: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// `metrics_allow`, parsed.
    pub fn metrics_allow(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.metrics_allow
            .iter()
            .map(|s| {
                parse_proxy(s).map_err(|_| {
                    anyhow::anyhow!("http.metrics_allow: {s:?} is not an address or a CIDR")
                })
            })
            .collect()
    }
}

impl Config {
    /// The HTTP listeners: one serving everything while `boot.listen` is unset or the same
    /// address as `http.listen`; else the management one and the provisioning one, and the
    /// provisioning HTTPS one when `boot.tls_listen` is set.
    pub fn listeners(&self) -> anyhow::Result<Vec<ListenerPlan>> {
        use plinth_api::Surface;
        let http_tls = tls_pair("http", &self.http.tls_cert, &self.http.tls_key)?;
        let boot_tls = tls_pair(
            "boot",
            &self.boot.listeners.tls_cert,
            &self.boot.listeners.tls_key,
        )?;
        let trusted_proxies = self
            .http
            .trusted_proxies
            .iter()
            .map(|p| parse_proxy(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.http.max_connections == 0 || self.http.max_connections_per_peer == 0 {
            bail!("http.max_connections and http.max_connections_per_peer must be at least 1");
        }
        let limits = plinth_api::ConnLimits {
            total: self.http.max_connections,
            per_peer: self
                .http
                .max_connections_per_peer
                .min(self.http.max_connections),
        };
        let split = self
            .boot
            .listeners
            .listen
            .is_some_and(|b| b != self.http.listen);
        let mut out = Vec::new();
        if split {
            out.push(ListenerPlan {
                addr: self.http.listen,
                surface: Surface::Management,
                tls: http_tls,
                trusted_proxies: trusted_proxies.clone(),
                limits,
            });
            out.push(ListenerPlan {
                addr: self.boot.listeners.listen.unwrap_or(self.http.listen),
                surface: Surface::Provisioning,
                tls: None,
                trusted_proxies: Vec::new(),
                limits,
            });
        } else {
            if http_tls.is_some() {
                bail!(
                    "http.tls_cert needs boot.listen on another address: the machines that boot \
                     from the network and their agent speak plain HTTP to the provisioning routes \
                     (set boot.listen, e.g. \"10.0.0.2:8080\", and http.listen to the management \
                     network's address)"
                );
            }
            out.push(ListenerPlan {
                addr: self.http.listen,
                surface: Surface::All,
                tls: None,
                trusted_proxies: trusted_proxies.clone(),
                limits,
            });
        }
        match (self.boot.listeners.tls_listen, boot_tls) {
            (Some(addr), Some(tls)) => {
                if out.iter().any(|l| l.addr == addr) {
                    bail!("boot.tls_listen {addr} is already the address of another listener");
                }
                out.push(ListenerPlan {
                    addr,
                    surface: Surface::Provisioning,
                    tls: Some(tls),
                    trusted_proxies: Vec::new(),
                    limits,
                });
            }
            (Some(_), None) => bail!("boot.tls_listen needs boot.tls_cert and boot.tls_key"),
            (None, Some(_)) => bail!("boot.tls_cert is set but boot.tls_listen is not"),
            (None, None) => {}
        }
        Ok(out)
    }

    /// The port machines reach the provisioning routes on over plain HTTP.
    pub fn boot_port(&self) -> u16 {
        self.boot
            .listeners
            .listen
            .unwrap_or(self.http.listen)
            .port()
    }
}
