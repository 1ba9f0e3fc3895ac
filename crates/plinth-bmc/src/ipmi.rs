//! The IPMI 2.0 (RMCP+, "lanplus") driver: [`wire`] is the sans-IO codec with the RAKP and
//! session cryptography of cipher suites 3 (SHA-1) and 17 (SHA-256), [`lan`] the session over
//! UDP, and [`Ipmi`] the [`crate::Bmc`] on top: one session per BMC, opened on first use and
//! again after a failure (BMCs close idle sessions). The suite is
//! [`IpmiConfig::cipher_suite`]; 3 unless configured.

pub mod lan;
pub mod wire;

use futures::future::BoxFuture;
use tokio::sync::Mutex;

use crate::{
    Bmc, BmcError, BootDevice, BootMode, BootOverride, Identity, PowerAction, PowerState, Result,
};
pub use lan::IpmiConfig;
pub use wire::CipherSuite;

pub struct Ipmi {
    cfg: IpmiConfig,
    state: Mutex<State>,
}

struct State {
    session: Option<lan::Session>,
    suite: CipherSuite,
    /// Try suite 3 when the BMC refuses suite 17 (see [`Ipmi::strongest`]).
    fallback: bool,
}

const NETFN_CHASSIS: u8 = 0x00;
const NETFN_APP: u8 = 0x06;

impl Ipmi {
    pub fn new(cfg: IpmiConfig) -> Ipmi {
        Ipmi {
            state: Mutex::new(State {
                session: None,
                suite: cfg.cipher_suite,
                fallback: false,
            }),
            cfg,
        }
    }

    /// Cipher suite 17 (SHA-256) where the BMC offers it, else 3: what plinth uses for BMCs
    /// whose suite is not configured. The suite that worked is kept for later sessions.
    pub fn strongest(cfg: IpmiConfig) -> Ipmi {
        Ipmi {
            state: Mutex::new(State {
                session: None,
                suite: CipherSuite::Seventeen,
                fallback: true,
            }),
            cfg,
        }
    }

    /// The suite this driver opens sessions with now.
    pub async fn cipher_suite(&self) -> CipherSuite {
        self.state.lock().await.suite
    }

    async fn open(&self, st: &mut State) -> Result<lan::Session> {
        let mut cfg = self.cfg.clone();
        cfg.cipher_suite = st.suite;
        match lan::Session::open(&cfg).await {
            Err(BmcError::Unsupported(why))
                if st.fallback && st.suite == CipherSuite::Seventeen =>
            {
                tracing::debug!(bmc = %cfg.addr, %why, "cipher suite 17 refused: trying 3");
                st.suite = CipherSuite::Three;
                st.fallback = false;
                cfg.cipher_suite = CipherSuite::Three;
                lan::Session::open(&cfg).await
            }
            other => {
                if other.is_ok() {
                    st.fallback = false;
                }
                other
            }
        }
    }

    /// A command in the session, opening one when there is none; a command that fails for a
    /// reason a new session may cure is tried once more in a new session.
    async fn command(&self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        for attempt in 0..2 {
            if st.session.is_none() {
                let s = self.open(st).await?;
                st.session = Some(s);
            }
            let Some(s) = st.session.as_mut() else {
                continue;
            };
            match s.command(netfn, cmd, data).await {
                Ok(d) => return Ok(d),
                Err(e @ (BmcError::Timeout | BmcError::Protocol(_))) => {
                    st.session = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(BmcError::Timeout)
    }

    /// Closes the session, if one is open (best effort).
    pub async fn close(&self) {
        let session = self.state.lock().await.session.take();
        if let Some(s) = session {
            s.close().await;
        }
    }

    async fn chassis_power(&self) -> Result<PowerState> {
        let d = self.command(NETFN_CHASSIS, 0x01, &[]).await?;
        let b = d
            .first()
            .ok_or_else(|| BmcError::Protocol("empty chassis status".into()))?;
        Ok(if b & 0x01 != 0 {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn do_power(&self, action: PowerAction) -> Result<()> {
        let control = match action {
            PowerAction::On => 0x01,
            PowerAction::Off { force: true } => 0x00,
            PowerAction::Off { force: false } => 0x05,
            PowerAction::Cycle => {
                // A power cycle of a machine that is off is an error on many BMCs.
                if self.chassis_power().await? == PowerState::Off {
                    0x01
                } else {
                    0x02
                }
            }
            PowerAction::Reset => 0x03,
        };
        self.command(NETFN_CHASSIS, 0x02, &[control])
            .await
            .map(|_| ())
    }

    async fn do_set_boot(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: Option<BootMode>,
    ) -> Result<()> {
        // Set in progress (parameter 0); BMCs without it answer 0x80 (not supported) or, like
        // ipmi_sim, 0xcc (invalid data): then the flags are set without it. 0x81 (already in
        // progress) is what a retransmission gets when the BMC's first answer was lost, or what
        // a client that died half way left behind: the flags are written all the same, and the
        // set marked complete after.
        let in_progress = match self.command(NETFN_CHASSIS, 0x08, &[0x00, 0x01]).await {
            Ok(_) => true,
            Err(BmcError::Rejected(m)) if m.contains("0x81") => true,
            Err(BmcError::Rejected(m)) if m.contains("0x80") || m.contains("0xcc") => false,
            Err(e) => return Err(e),
        };
        let mut flags = 0x80u8;
        if persistent {
            flags |= 0x40;
        }
        if mode == Some(BootMode::Uefi) {
            flags |= 0x20;
        }
        let dev = match device {
            BootDevice::Pxe => 0x04,
            BootDevice::Disk => 0x08,
            BootDevice::BiosSetup => 0x18,
            BootDevice::Cdrom => 0x14,
        };
        let set = self
            .command(NETFN_CHASSIS, 0x08, &[0x05, flags, dev, 0x00, 0x00, 0x00])
            .await;
        if in_progress {
            self.command(NETFN_CHASSIS, 0x08, &[0x00, 0x00]).await.ok();
        }
        set.map(|_| ())
    }

    async fn do_boot_override(&self) -> Result<BootOverride> {
        let d = self
            .command(NETFN_CHASSIS, 0x09, &[0x05, 0x00, 0x00])
            .await?;
        // [parameter version, parameter 5 (bit 7: invalid), flags, device, ...]
        let (flags, dev) = match (d.get(2), d.get(3)) {
            (Some(f), Some(v)) => (*f, *v),
            _ => return Err(BmcError::Protocol("short boot options".into())),
        };
        let device = if flags & 0x80 == 0 {
            None
        } else {
            match (dev >> 2) & 0x0f {
                0x01 => Some(BootDevice::Pxe),
                0x02 => Some(BootDevice::Disk),
                0x05 => Some(BootDevice::Cdrom),
                0x06 => Some(BootDevice::BiosSetup),
                _ => None,
            }
        };
        Ok(BootOverride {
            device,
            persistent: flags & 0x40 != 0,
            mode: Some(if flags & 0x20 != 0 {
                BootMode::Uefi
            } else {
                BootMode::Bios
            }),
        })
    }

    async fn do_identity(&self) -> Result<Identity> {
        // Get System GUID; the rest of the identity lives in FRU data (not read yet).
        let d = self.command(NETFN_APP, 0x37, &[]).await?;
        let uuid = <[u8; 16]>::try_from(d.get(..16).unwrap_or_default())
            .ok()
            .map(|mut b| {
                // IPMI sends the GUID least significant byte first.
                b.reverse();
                uuid::Uuid::from_bytes(b)
            });
        Ok(Identity {
            uuid,
            ..Identity::default()
        })
    }
}

impl Bmc for Ipmi {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState>> {
        Box::pin(self.chassis_power())
    }
    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_power(action))
    }
    fn set_boot(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: Option<BootMode>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_set_boot(device, persistent, mode))
    }
    fn boot_override(&self) -> BoxFuture<'_, Result<BootOverride>> {
        Box::pin(self.do_boot_override())
    }
    fn identity(&self) -> BoxFuture<'_, Result<Identity>> {
        Box::pin(self.do_identity())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Ipmi::close(self))
    }
}
