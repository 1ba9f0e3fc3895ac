//! A BMC in memory, for tests: it keeps a power state and a boot override like a real one (a
//! one-time override is used up when the machine boots), records every call, and can be told
//! to misbehave: fail the next calls, answer slowly, be unreachable, or silently keep its old
//! boot override. Its health and event log are knobs too ([`FakeBmc::set_health`],
//! [`FakeBmc::push_log`]). Its virtual media are two slots in memory (a CD drive and a USB
//! stick, [`FakeBmc::set_media_slots`] for others), with a knob that makes an insertion
//! silently not stick ([`FakeBmc::set_ignores_media`]).

mod firmware;

pub use firmware::{TASK_POLLS, UpdateOutcome};

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{
    Bmc, BmcError, BootDevice, BootMode, BootOverride, Identity, PowerAction, PowerState, Result,
};

/// A call the fake received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    PowerState,
    Power(PowerAction),
    SetBoot {
        device: BootDevice,
        persistent: bool,
        mode: Option<BootMode>,
    },
    BootOverride,
    Identity,
    Health,
    LogEntries,
    MediaSlots,
    InsertMedia {
        slot: String,
        url: String,
    },
    EjectMedia {
        slot: String,
    },
    // --- BIOS ---
    BiosAttributes,
    BiosPending,
    SetBiosPending(crate::BiosAttributes),
    BiosRegistry,
    FirmwareInventory,
    UpdateCapabilities,
    SimpleUpdate(String),
    MultipartUpdate(usize),
    TaskStatus,
}

#[derive(Debug)]
struct State {
    power: PowerState,
    boot: BootOverride,
    identity: Identity,
    calls: Vec<Call>,
    /// Errors for the next calls, in order.
    failures: VecDeque<BmcError>,
    unreachable: bool,
    /// Accept boot overrides, and keep the old one.
    reverts_boot: bool,
    delay: Duration,
    /// Times the machine started (power on from off, cycle, reset).
    boots: u32,
    health: crate::Health,
    /// The event log; the cursor is how many entries were read.
    log: Vec<crate::LogEntry>,
    /// Virtual media slots.
    media: Vec<crate::MediaSlot>,
    /// Accept insertions and ejects, and keep the slot as it was.
    ignores_media: bool,
    bios: FakeBios,
    fw: firmware::FwState,
}

/// The fake's slots: a CD drive and a USB stick, empty.
pub const FAKE_CD: &str = "/redfish/v1/Managers/1/VirtualMedia/CD1";
pub const FAKE_USB: &str = "/redfish/v1/Managers/1/VirtualMedia/USB1";

fn empty_slot(id: &str, types: Vec<crate::MediaType>) -> crate::MediaSlot {
    crate::MediaSlot {
        id: id.to_owned(),
        media_types: types,
        inserted: false,
        image: None,
        write_protected: None,
        connected_via: Some("NotConnected".into()),
    }
}

/// The fake's BIOS: none until [`FakeBmc::set_bios`] gives it attributes.
#[derive(Debug, Default)]
struct FakeBios {
    current: Option<crate::BiosAttributes>,
    pending: crate::BiosAttributes,
    /// An attribute a boot silently leaves as it was.
    drops: Option<String>,
    registry: Option<crate::bios::Registry>,
}

#[derive(Debug)]
pub struct FakeBmc {
    state: Mutex<State>,
}

impl FakeBmc {
    pub fn new(identity: Identity) -> FakeBmc {
        FakeBmc {
            state: Mutex::new(State {
                power: PowerState::Off,
                boot: BootOverride {
                    device: None,
                    persistent: false,
                    mode: Some(BootMode::Uefi),
                    unconfirmed: None,
                },
                identity,
                calls: Vec::new(),
                failures: VecDeque::new(),
                unreachable: false,
                reverts_boot: false,
                delay: Duration::ZERO,
                boots: 0,
                health: crate::Health::unknown(),
                log: Vec::new(),
                media: vec![
                    empty_slot(FAKE_CD, vec![crate::MediaType::Cd, crate::MediaType::Dvd]),
                    empty_slot(FAKE_USB, vec![crate::MediaType::Usb]),
                ],
                ignores_media: false,
                bios: FakeBios::default(),
                fw: firmware::FwState::new(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("fake BMC state"))
    }

    /// The next calls fail with these errors, one each.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = BmcError>) {
        self.with(|s| s.failures.extend(errors));
    }
    pub fn set_unreachable(&self, yes: bool) {
        self.with(|s| s.unreachable = yes);
    }
    /// Accept boot overrides but keep the old one, as some BMCs do.
    pub fn set_reverts_boot(&self, yes: bool) {
        self.with(|s| s.reverts_boot = yes);
    }
    /// Every call takes this long.
    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d);
    }
    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }
    pub fn power_now(&self) -> PowerState {
        self.with(|s| s.power)
    }
    pub fn boot_now(&self) -> BootOverride {
        self.with(|s| s.boot)
    }
    /// What [`Bmc::health`] answers from now on.
    pub fn set_health(&self, h: crate::Health) {
        self.with(|s| s.health = h);
    }
    /// Appends an entry to the event log (its id: its position, from 1).
    pub fn push_log(
        &self,
        severity: crate::health::HealthStatus,
        message: &str,
    ) -> crate::LogEntry {
        self.with(|s| {
            let e = crate::LogEntry {
                id: (s.log.len() + 1).to_string(),
                time: Some(chrono::Utc::now()),
                severity,
                message: message.to_owned(),
                source: "fake".to_owned(),
            };
            s.log.push(e.clone());
            e
        })
    }
    /// The virtual media slots from now on (none: a BMC without virtual media, which
    /// answers [`BmcError::Unsupported`]).
    pub fn set_media_slots(&self, slots: Vec<crate::MediaSlot>) {
        self.with(|s| s.media = slots);
    }
    /// Accept insertions and ejects but keep the slots as they are, as some BMCs do.
    pub fn set_ignores_media(&self, yes: bool) {
        self.with(|s| s.ignores_media = yes);
    }
    /// The slots now.
    pub fn media_now(&self) -> Vec<crate::MediaSlot> {
        self.with(|s| s.media.clone())
    }
    // --- BIOS ---
    /// Gives the machine a BIOS with these attributes (and no change pending).
    pub fn set_bios(&self, attrs: crate::BiosAttributes) {
        self.with(|s| {
            s.bios.current = Some(attrs);
            s.bios.pending.clear();
        });
    }
    /// The BIOS attributes in effect now.
    pub fn bios_now(&self) -> Option<crate::BiosAttributes> {
        self.with(|s| s.bios.current.clone())
    }
    /// A boot applies every pending attribute but this one, silently.
    pub fn set_bios_drops(&self, name: Option<&str>) {
        self.with(|s| s.bios.drops = name.map(str::to_owned));
    }
    /// The attribute registry the fake publishes.
    pub fn set_bios_registry(&self, reg: Option<crate::bios::Registry>) {
        self.with(|s| s.bios.registry = reg);
    }

    /// Times the machine has started.
    pub fn boots(&self) -> u32 {
        self.with(|s| s.boots)
    }

    /// Records the call, waits the delay, then fails or runs `f`.
    fn call<T: Send + 'static>(
        &self,
        call: Call,
        f: impl FnOnce(&mut State) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'_, Result<T>> {
        let delay = self.with(|s| {
            s.calls.push(call);
            s.delay
        });
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.with(|s| {
                if s.unreachable {
                    return Err(BmcError::Unreachable("connection refused".into()));
                }
                if let Some(e) = s.failures.pop_front() {
                    return Err(e);
                }
                f(s)
            })
        })
    }
}

/// The machine starts: a one-time boot override is used up.
fn boot(s: &mut State) {
    s.power = PowerState::On;
    s.boots += 1;
    // The firmware applies the pending BIOS settings (all but the one it drops).
    let pending = std::mem::take(&mut s.bios.pending);
    if let Some(cur) = &mut s.bios.current {
        for (k, v) in pending {
            if s.bios.drops.as_deref() != Some(k.as_str()) {
                cur.insert(k, v);
            }
        }
    }
    if !s.boot.persistent {
        s.boot.device = None;
    }
    s.fw.on_boot();
}

impl Bmc for FakeBmc {
    fn power_state(&self) -> BoxFuture<'_, Result<PowerState>> {
        self.call(Call::PowerState, |s| Ok(s.power))
    }

    fn power(&self, action: PowerAction) -> BoxFuture<'_, Result<()>> {
        self.call(Call::Power(action), move |s| {
            match action {
                PowerAction::On => {
                    if s.power != PowerState::On {
                        boot(s);
                    }
                }
                PowerAction::Off { .. } => s.power = PowerState::Off,
                PowerAction::Cycle => boot(s),
                PowerAction::Reset => {
                    if s.power != PowerState::On {
                        return Err(BmcError::Rejected(
                            "a reset needs the machine to be on".into(),
                        ));
                    }
                    boot(s);
                }
            }
            Ok(())
        })
    }

    fn set_boot(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: Option<BootMode>,
    ) -> BoxFuture<'_, Result<()>> {
        self.call(
            Call::SetBoot {
                device,
                persistent,
                mode,
            },
            move |s| {
                if !s.reverts_boot {
                    s.boot = BootOverride {
                        device: Some(device),
                        persistent,
                        mode: mode.or(s.boot.mode),
                        unconfirmed: None,
                    };
                }
                Ok(())
            },
        )
    }

    fn boot_override(&self) -> BoxFuture<'_, Result<BootOverride>> {
        self.call(Call::BootOverride, |s| Ok(s.boot))
    }

    fn identity(&self) -> BoxFuture<'_, Result<Identity>> {
        self.call(Call::Identity, |s| Ok(s.identity.clone()))
    }

    fn health(&self) -> BoxFuture<'_, Result<crate::Health>> {
        self.call(Call::Health, |s| Ok(s.health.clone()))
    }

    // --- BIOS ---
    fn bios_attributes(&self) -> BoxFuture<'_, Result<crate::BiosAttributes>> {
        self.call(Call::BiosAttributes, |s| {
            s.bios
                .current
                .clone()
                .ok_or_else(|| BmcError::Unsupported("BIOS settings".into()))
        })
    }

    fn bios_pending(&self) -> BoxFuture<'_, Result<Option<crate::BiosAttributes>>> {
        self.call(Call::BiosPending, |s| match &s.bios.current {
            Some(_) => Ok(Some(s.bios.pending.clone())),
            None => Err(BmcError::Unsupported("BIOS settings".into())),
        })
    }

    fn set_bios_pending<'a>(
        &'a self,
        attrs: &'a crate::BiosAttributes,
    ) -> BoxFuture<'a, Result<()>> {
        let attrs = attrs.clone();
        self.call(Call::SetBiosPending(attrs.clone()), move |s| {
            if s.bios.current.is_none() {
                return Err(BmcError::Unsupported("BIOS settings".into()));
            }
            s.bios.pending.extend(attrs);
            Ok(())
        })
    }

    fn bios_registry(&self) -> BoxFuture<'_, Result<Option<crate::bios::Registry>>> {
        self.call(Call::BiosRegistry, |s| match &s.bios.current {
            Some(_) => Ok(s.bios.registry.clone()),
            None => Err(BmcError::Unsupported("BIOS settings".into())),
        })
    }

    fn log_entries<'a>(
        &'a self,
        cursor: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<crate::LogBatch>> {
        let from = cursor.map(|c| c.parse::<usize>());
        self.call(Call::LogEntries, move |s| {
            let from = match from {
                None => s.log.len(),
                Some(Ok(n)) => n.min(s.log.len()),
                Some(Err(_)) => return Err(BmcError::Protocol("not a fake cursor".into())),
            };
            let entries: Vec<_> = s.log[from..].iter().take(max).cloned().collect();
            Ok(crate::LogBatch {
                cursor: (from + entries.len()).to_string(),
                entries,
            })
        })
    }

    fn media_slots(&self) -> BoxFuture<'_, Result<Vec<crate::MediaSlot>>> {
        self.call(Call::MediaSlots, |s| {
            if s.media.is_empty() {
                return Err(BmcError::Unsupported("virtual media".into()));
            }
            Ok(s.media.clone())
        })
    }

    fn insert_media<'a>(&'a self, slot: &'a str, url: &'a str) -> BoxFuture<'a, Result<()>> {
        let (slot, url) = (slot.to_owned(), url.to_owned());
        self.call(
            Call::InsertMedia {
                slot: slot.clone(),
                url: url.clone(),
            },
            move |s| {
                let ignores = s.ignores_media;
                let m = media_slot(s, &slot)?;
                if !ignores {
                    m.inserted = true;
                    m.image = Some(url);
                    m.write_protected = Some(true);
                    m.connected_via = Some("URI".into());
                }
                Ok(())
            },
        )
    }

    fn eject_media<'a>(&'a self, slot: &'a str) -> BoxFuture<'a, Result<()>> {
        let slot = slot.to_owned();
        self.call(Call::EjectMedia { slot: slot.clone() }, move |s| {
            let ignores = s.ignores_media;
            let m = media_slot(s, &slot)?;
            if !ignores {
                *m = empty_slot(&m.id, m.media_types.clone());
            }
            Ok(())
        })
    }

    // --- firmware ---
    fn firmware_inventory(&self) -> BoxFuture<'_, Result<Vec<crate::firmware::FirmwareItem>>> {
        self.call(Call::FirmwareInventory, |s| Ok(s.fw.inventory()))
    }

    fn update_capabilities(&self) -> BoxFuture<'_, Result<crate::firmware::UpdateCapabilities>> {
        self.call(Call::UpdateCapabilities, |_| {
            Ok(firmware::FwState::capabilities())
        })
    }

    fn simple_update<'a>(
        &'a self,
        image_url: &'a str,
        targets: &'a [String],
    ) -> BoxFuture<'a, Result<crate::firmware::UpdateTask>> {
        let targets = targets.to_vec();
        let url = image_url.to_owned();
        self.call(Call::SimpleUpdate(url.clone()), move |s| {
            s.fw.start(url, &targets)
        })
    }

    fn multipart_update<'a>(
        &'a self,
        image: Vec<u8>,
        targets: &'a [String],
    ) -> BoxFuture<'a, Result<crate::firmware::UpdateTask>> {
        let targets = targets.to_vec();
        let n = image.len();
        self.call(Call::MultipartUpdate(n), move |s| {
            s.fw.start(format!("push:{n}"), &targets)
        })
    }

    fn task_status<'a>(
        &'a self,
        task: &'a crate::firmware::UpdateTask,
    ) -> BoxFuture<'a, Result<crate::firmware::TaskStatus>> {
        let task = task.clone();
        self.call(Call::TaskStatus, move |s| s.fw.status(&task))
    }
}

fn media_slot<'a>(s: &'a mut State, id: &str) -> Result<&'a mut crate::MediaSlot> {
    s.media
        .iter_mut()
        .find(|m| m.id == id)
        .ok_or_else(|| BmcError::Rejected(format!("no virtual media slot {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::set_boot_verified;

    fn fake() -> FakeBmc {
        FakeBmc::new(Identity {
            manufacturer: Some("Acme".into()),
            model: Some("X1".into()),
            serial: Some("SN1".into()),
            uuid: Some(uuid::Uuid::nil()),
            macs: vec!["52:54:00:00:00:01".parse().unwrap()],
        })
    }

    #[tokio::test]
    async fn power_and_one_time_boot_overrides() {
        let b = fake();
        assert_eq!(b.power_state().await.unwrap(), PowerState::Off);
        set_boot_verified(&b, BootDevice::Pxe, false, Some(BootMode::Uefi))
            .await
            .unwrap();
        b.power(PowerAction::On).await.unwrap();
        assert_eq!(b.power_now(), PowerState::On);
        assert_eq!(
            b.boot_now().device,
            None,
            "a one-time override is used up by the boot"
        );
        // Persistent overrides stay; on twice boots once.
        b.set_boot(BootDevice::Disk, true, None).await.unwrap();
        b.power(PowerAction::On).await.unwrap();
        b.power(PowerAction::Cycle).await.unwrap();
        assert_eq!(b.boot_now().device, Some(BootDevice::Disk));
        assert_eq!(b.boots(), 2);
        b.power(PowerAction::Off { force: true }).await.unwrap();
        assert!(matches!(
            b.power(PowerAction::Reset).await,
            Err(BmcError::Rejected(_))
        ));
        assert_eq!(b.identity().await.unwrap().serial.as_deref(), Some("SN1"));
        let calls = b.calls();
        assert_eq!(calls.len(), 10);
        assert_eq!(
            calls[1..4],
            [
                Call::SetBoot {
                    device: BootDevice::Pxe,
                    persistent: false,
                    mode: Some(BootMode::Uefi)
                },
                Call::BootOverride,
                Call::Power(PowerAction::On)
            ]
        );
    }

    #[tokio::test]
    async fn a_reverted_override_is_caught() {
        let b = fake();
        b.set_reverts_boot(true);
        let e = set_boot_verified(&b, BootDevice::Pxe, false, None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, BmcError::Reverted { got, .. } if got.device.is_none()),
            "{e:?}"
        );
        assert!(e.is_transient());
        // A mode the BMC reports differently counts as reverted too.
        b.set_reverts_boot(false);
        assert!(
            set_boot_verified(&b, BootDevice::Pxe, true, Some(BootMode::Bios))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn failures_and_unreachable_bmcs() {
        let b = fake();
        b.fail_next([BmcError::Busy("503".into()), BmcError::Auth]);
        let e1 = b.power_state().await.unwrap_err();
        let e2 = b.power_state().await.unwrap_err();
        assert!(e1.is_transient() && !e2.is_transient());
        assert!(b.power_state().await.is_ok());
        b.set_unreachable(true);
        assert!(matches!(
            b.power(PowerAction::On).await,
            Err(BmcError::Unreachable(_))
        ));
        assert_eq!(b.power_now(), PowerState::Off, "nothing happened");
        assert!(!BmcError::Unsupported("cdrom".into()).is_transient());
        assert!(
            !BmcError::Auth.to_string().contains("password"),
            "messages carry no credentials"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_bmcs_are_slow() {
        let b = fake();
        b.set_delay(Duration::from_secs(30));
        let t = tokio::time::Instant::now();
        b.power_state().await.unwrap();
        assert!(t.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn virtual_media_in_memory() {
        use crate::{MediaType, choose_slot, eject_media_verified, insert_media_verified};
        let b = fake();
        let url = "http://10.0.0.1/vmedia/t0ken/boot.iso";
        let slots = b.media_slots().await.unwrap();
        let cd = choose_slot(&slots, MediaType::Cd).unwrap().id.clone();
        assert_eq!(cd, FAKE_CD);
        let got = insert_media_verified(&b, &cd, url).await.unwrap();
        assert!(got.holds(url));
        b.power(PowerAction::Cycle).await.unwrap();
        assert!(
            b.media_now()[0].holds(url),
            "a power cycle keeps the medium"
        );
        eject_media_verified(&b, &cd).await.unwrap();
        // A BMC that says yes and keeps its slot as it was.
        b.set_ignores_media(true);
        let e = insert_media_verified(&b, &cd, url).await.unwrap_err();
        assert!(
            matches!(&e, BmcError::MediaNotInserted { got: None, .. }),
            "{e:?}"
        );
        assert!(e.is_transient() && !e.to_string().contains("t0ken"));
        b.set_ignores_media(false);
        assert!(matches!(
            b.insert_media("/nowhere", url).await,
            Err(BmcError::Rejected(_))
        ));
        b.set_media_slots(Vec::new());
        assert!(matches!(
            b.media_slots().await,
            Err(BmcError::Unsupported(_))
        ));
        assert_eq!(
            b.calls()
                .iter()
                .filter(|c| matches!(c, Call::InsertMedia { .. }))
                .count(),
            3
        );
    }

    #[test]
    fn the_trait_is_object_safe() {
        let b: Box<dyn Bmc> = Box::new(fake());
        drop(b);
    }
}
