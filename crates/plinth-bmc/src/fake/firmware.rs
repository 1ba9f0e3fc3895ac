//! The fake BMC's firmware (issue 21): an inventory of a BMC, a BIOS, a NIC and a drive, all
//! at 1.0.0, and updates that become tasks running for a few polls. Knobs: what the next
//! update installs ([`FakeBmc::set_update_installs`]), and how it ends ([`UpdateOutcome`]):
//! it fails, it reports success and keeps the old version, or it needs a reboot (the version
//! changes when the machine next starts).

use crate::firmware::{
    ComponentKind, FirmwareItem, TaskPhase, TaskStatus, UpdateCapabilities, UpdateTask,
};
use crate::{BmcError, Result};

use super::FakeBmc;

/// How the fake's next updates end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The version changes when the task completes.
    #[default]
    Applies,
    /// The task ends in `Exception`.
    Fails,
    /// The task completes, and the version stays what it was.
    KeepsOldVersion,
    /// The task completes asking for a reset; the version changes at the next start.
    NeedsReboot,
}

#[derive(Debug)]
struct Task {
    targets: Vec<String>,
    polls: u32,
    outcome: UpdateOutcome,
    installs: String,
    done: bool,
}

#[derive(Debug, Default)]
pub(super) struct FwState {
    items: Vec<FirmwareItem>,
    tasks: Vec<Task>,
    outcome: UpdateOutcome,
    installs: String,
    /// (target URI, version) applied at the next start.
    pending: Vec<(String, String)>,
    /// Image URLs given to SimpleUpdate and sizes of pushed images, in order.
    pub(super) pushes: Vec<String>,
}

/// Polls a task answers Running before it ends.
pub const TASK_POLLS: u32 = 2;

fn item(id: &str, name: &str, kind: ComponentKind) -> FirmwareItem {
    FirmwareItem {
        id: id.into(),
        uri: format!("/redfish/v1/UpdateService/FirmwareInventory/{id}"),
        name: name.into(),
        kind,
        version: Some("1.0.0".into()),
        updateable: true,
        software_id: None,
    }
}

impl FwState {
    pub(super) fn new() -> FwState {
        FwState {
            items: vec![
                item("BMC", "BMC firmware", ComponentKind::Bmc),
                item("BIOS", "BIOS", ComponentKind::Bios),
                item("NIC.1", "Ethernet adapter", ComponentKind::Nic),
                item("Disk.0", "SSD 480GB", ComponentKind::Drive),
            ],
            installs: "1.1.0".into(),
            ..FwState::default()
        }
    }

    /// The machine starts: pending versions take effect.
    pub(super) fn on_boot(&mut self) {
        for (uri, v) in std::mem::take(&mut self.pending) {
            if let Some(i) = self.items.iter_mut().find(|i| i.uri == uri) {
                i.version = Some(v);
            }
        }
    }

    pub(super) fn inventory(&self) -> Vec<FirmwareItem> {
        self.items.clone()
    }

    pub(super) fn capabilities() -> UpdateCapabilities {
        UpdateCapabilities {
            simple_update: Some(
                "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate".into(),
            ),
            transfer_protocols: vec!["HTTP".into(), "HTTPS".into()],
            multipart_push_uri: Some("/redfish/v1/UpdateService/upload".into()),
            http_push_uri: None,
        }
    }

    pub(super) fn start(&mut self, what: String, targets: &[String]) -> Result<UpdateTask> {
        for t in targets {
            if !self.items.iter().any(|i| &i.uri == t) {
                return Err(BmcError::Rejected(format!(
                    "HTTP 400: the target {t} is not in the firmware inventory"
                )));
            }
        }
        self.pushes.push(what);
        self.tasks.push(Task {
            targets: targets.to_vec(),
            polls: 0,
            outcome: self.outcome,
            installs: self.installs.clone(),
            done: false,
        });
        Ok(UpdateTask {
            monitor: None,
            task: Some(format!(
                "/redfish/v1/TaskService/Tasks/{}",
                self.tasks.len()
            )),
            immediate: false,
        })
    }

    pub(super) fn status(&mut self, t: &UpdateTask) -> Result<TaskStatus> {
        let n: usize = t
            .task
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| BmcError::Rejected("HTTP 404: no such task".into()))?;
        let Some(task) = n.checked_sub(1).and_then(|i| self.tasks.get_mut(i)) else {
            return Err(BmcError::Rejected("HTTP 404: no such task".into()));
        };
        task.polls += 1;
        if task.polls <= TASK_POLLS {
            return Ok(TaskStatus {
                phase: TaskPhase::Running,
                state: "Running".into(),
                percent: Some((task.polls * 100 / (TASK_POLLS + 1)) as u8),
                messages: vec!["Transferring the image.".into()],
                needs_reboot: false,
            });
        }
        let first = !task.done;
        task.done = true;
        let (phase, state, messages, needs_reboot) = match task.outcome {
            UpdateOutcome::Fails => (
                TaskPhase::Failed,
                "Exception",
                vec!["Image verification failed.".to_owned()],
                false,
            ),
            UpdateOutcome::NeedsReboot => (
                TaskPhase::Completed,
                "Completed",
                vec!["Base.1.8.ResetRequired".to_owned()],
                true,
            ),
            _ => (TaskPhase::Completed, "Completed", Vec::new(), false),
        };
        if first {
            let targets = task.targets.clone();
            let v = task.installs.clone();
            match task.outcome {
                UpdateOutcome::Applies => {
                    for i in self.items.iter_mut().filter(|i| targets.contains(&i.uri)) {
                        i.version = Some(v.clone());
                    }
                }
                UpdateOutcome::NeedsReboot => {
                    self.pending
                        .extend(targets.into_iter().map(|t| (t, v.clone())));
                }
                UpdateOutcome::Fails | UpdateOutcome::KeepsOldVersion => {}
            }
        }
        Ok(TaskStatus {
            phase,
            state: state.into(),
            percent: Some(100),
            messages,
            needs_reboot,
        })
    }
}

impl FakeBmc {
    /// The version the next updates install (1.1.0 unless set).
    pub fn set_update_installs(&self, version: &str) {
        self.with(|s| s.fw.installs = version.to_owned());
    }
    /// How the next updates end.
    pub fn set_update_outcome(&self, o: UpdateOutcome) {
        self.with(|s| s.fw.outcome = o);
    }
    /// Image URLs (SimpleUpdate) and `push:<bytes>` (multipart) received, in order.
    pub fn update_pushes(&self) -> Vec<String> {
        self.with(|s| s.fw.pushes.clone())
    }
    /// The version of the item of `kind` now.
    pub fn firmware_version(&self, kind: ComponentKind) -> Option<String> {
        self.with(|s| {
            s.fw.items
                .iter()
                .find(|i| i.kind == kind)
                .and_then(|i| i.version.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bmc;

    async fn run(b: &FakeBmc, t: &UpdateTask) -> TaskStatus {
        loop {
            let s = b.task_status(t).await.unwrap();
            if s.phase != TaskPhase::Running {
                return s;
            }
        }
    }

    #[tokio::test]
    async fn updates_end_as_told() {
        let b = FakeBmc::new(Default::default());
        let inv = b.firmware_inventory().await.unwrap();
        let bios = inv.iter().find(|i| i.kind == ComponentKind::Bios).unwrap();
        let targets = vec![bios.uri.clone()];
        let t = b.simple_update("http://x/fw.bin", &targets).await.unwrap();
        assert_eq!(run(&b, &t).await.phase, TaskPhase::Completed);
        assert_eq!(
            b.firmware_version(ComponentKind::Bios).as_deref(),
            Some("1.1.0")
        );

        b.set_update_installs("1.2.0");
        b.set_update_outcome(UpdateOutcome::KeepsOldVersion);
        let t = b.simple_update("http://x/fw.bin", &targets).await.unwrap();
        assert_eq!(run(&b, &t).await.phase, TaskPhase::Completed);
        assert_eq!(
            b.firmware_version(ComponentKind::Bios).as_deref(),
            Some("1.1.0")
        );

        b.set_update_outcome(UpdateOutcome::Fails);
        let t = b.multipart_update(vec![1, 2, 3], &targets).await.unwrap();
        assert_eq!(run(&b, &t).await.phase, TaskPhase::Failed);

        b.set_update_outcome(UpdateOutcome::NeedsReboot);
        let t = b.simple_update("http://x/fw.bin", &targets).await.unwrap();
        assert!(run(&b, &t).await.needs_reboot);
        assert_eq!(
            b.firmware_version(ComponentKind::Bios).as_deref(),
            Some("1.1.0")
        );
        b.power(crate::PowerAction::On).await.unwrap();
        assert_eq!(
            b.firmware_version(ComponentKind::Bios).as_deref(),
            Some("1.2.0")
        );
        assert_eq!(b.update_pushes().len(), 4);
        assert!(matches!(
            b.simple_update("http://x", &["/nope".to_owned()]).await,
            Err(BmcError::Rejected(_))
        ));
    }
}
