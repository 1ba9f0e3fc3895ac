//! Firmware jobs (issue 21): an update from a catalog image, and an inventory read.
//!
//! An update, step by step, each step written to the job's `result` before the next BMC call
//! (fenced by the attempt), so that a plinth that died half-way, or an attempt that failed on
//! a transient error, resumes where it was instead of pushing the image again:
//!
//! 1. `pushing`: the inventory is read; the component's item is found (the first updateable
//!    one of the image's kind). Already at the image's version: nothing is pushed (this is
//!    also how a resumed job whose push was lost with its worker finds that it landed). Else
//!    the image goes to the BMC: SimpleUpdate from the per-job URL under `boot.public_url`
//!    (`/firmware/{job}/{token}`), or a multipart push of the file.
//! 2. `monitoring`: the BMC's task is polled until it completes (progress events as its
//!    percentage moves) or fails (the job fails with the task's messages).
//! 3. `activating`: a reset when the task asks for one, and always for a BIOS; a machine that
//!    was off is powered on for it and off again after.
//! 4. `verifying`: the inventory is read again (until `power_wait`): the item must report the
//!    image's version. A BMC that said "done" and still reports the old version fails the
//!    job: "BMC reported success but BIOS still reads 1.0.0 (expected 1.1.0)".
//!
//! The inventory read is stored with the machine (`machine_firmware`) at every read.

use std::time::Duration;

use plinth_bmc::firmware::{ComponentKind, FirmwareItem, TaskPhase, UpdateTask};
use plinth_bmc::{Bmc, PowerAction, PowerState};
use plinth_db::jobs::Claimed;
use plinth_types::firmware::UpdateMethod;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::JobSettings;
use super::call::{Failure, call, final_failure};
use super::event;
use super::execute::Done;
use crate::jobs::JobSpec;
use crate::{App, DbResult};

/// The longest plinth follows an update task.
pub const TASK_WAIT: Duration = Duration::from_secs(2 * 3600);

/// What `App::request_firmware_update` writes in the job's params.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub image: Uuid,
    pub image_name: String,
    pub component: String,
    pub version: String,
    /// The secret of the image's per-job URL.
    pub token: String,
    pub method: UpdateMethod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Step {
    #[default]
    Pushing,
    Monitoring,
    Activating,
    Verifying,
}

/// The job's `result` while it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    step: Step,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<UpdateTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    messages: Vec<String>,
    #[serde(default)]
    needs_reboot: bool,
    #[serde(default)]
    rebooted: bool,
    /// plinth powered the machine on to activate the image: it powers it off again.
    #[serde(default)]
    powered_on: bool,
    /// Pushes sent so far (over all attempts).
    #[serde(default)]
    pushes: u32,
}

fn component_name(c: &str) -> String {
    match c {
        "bmc" | "bios" | "nic" => c.to_ascii_uppercase(),
        other => other.to_owned(),
    }
}

pub(super) async fn execute(
    app: &App,
    j: &Claimed,
    bmc: &dyn Bmc,
    spec: JobSpec,
    s: &JobSettings,
) -> std::result::Result<Done, Failure> {
    match spec {
        JobSpec::FirmwareRead => {
            let items = read_inventory(app, j.machine_id, bmc, s).await?;
            Ok(Done {
                result: json!({ "items": items.len() }),
                power: None,
                identity: None,
            })
        }
        JobSpec::FirmwareUpdate { .. } => {
            let params: Params = serde_json::from_value(j.params.clone())
                .map_err(|e| final_failure("config", format!("firmware_update job: {e}")))?;
            Update {
                app,
                j,
                bmc,
                s,
                params,
            }
            .run()
            .await
        }
        _ => Err(final_failure("config", "not a firmware job")),
    }
}

/// Database trouble in the middle of an update: worth another attempt (which resumes).
fn db_failure(e: plinth_types::Error) -> Failure {
    Failure {
        transient: true,
        kind: "database",
        message: format!("recording the update's progress: {}", e.message),
    }
}

/// Reads the inventory and stores it with the machine.
pub(super) async fn read_inventory(
    app: &App,
    machine_id: Uuid,
    bmc: &dyn Bmc,
    s: &JobSettings,
) -> std::result::Result<Vec<FirmwareItem>, Failure> {
    let items = call(
        s.call_timeout.saturating_mul(4),
        "read the firmware inventory",
        bmc.firmware_inventory(),
    )
    .await?;
    let v = serde_json::to_value(&items).unwrap_or_default();
    let mut conn = app.conn().await.map_err(db_failure)?;
    plinth_db::firmware::set_inventory(&mut conn, machine_id, &v)
        .await
        .db()
        .map_err(db_failure)?;
    Ok(items)
}

struct Update<'a> {
    app: &'a App,
    j: &'a Claimed,
    bmc: &'a dyn Bmc,
    s: &'a JobSettings,
    params: Params,
}

impl Update<'_> {
    async fn save(&self, p: &Progress) -> std::result::Result<(), Failure> {
        let mut conn = self.app.conn().await.map_err(db_failure)?;
        let v = serde_json::to_value(p).unwrap_or_default();
        let ours = plinth_db::firmware::save_progress(&mut conn, self.j.id, self.j.attempts, &v)
            .await
            .db()
            .map_err(db_failure)?;
        if !ours {
            // The lease ran out and another worker has the job: stop touching the BMC.
            return Err(Failure {
                transient: true,
                kind: "lease_lost",
                message: "the job was taken from this worker".into(),
            });
        }
        Ok(())
    }

    async fn event(&self, kind: &str, details: serde_json::Value) {
        let res = async {
            let mut tx = self.app.begin().await?;
            event(&mut tx, self.j.machine_id, kind, details).await?;
            tx.commit().await.db()
        }
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e.message, kind, "recording a firmware event failed");
        }
    }

    fn wanted(&self) -> std::result::Result<ComponentKind, Failure> {
        ComponentKind::parse(&self.params.component).ok_or_else(|| {
            final_failure(
                "config",
                format!("unknown component {:?}", self.params.component),
            )
        })
    }

    /// The item the update targets: the one named before, or the first updateable item of
    /// the image's component.
    fn item<'i>(
        &self,
        items: &'i [FirmwareItem],
        target: Option<&str>,
    ) -> std::result::Result<&'i FirmwareItem, Failure> {
        let kind = self.wanted()?;
        let found = match target {
            Some(t) => items.iter().find(|i| i.uri == t),
            None => items
                .iter()
                .find(|i| i.kind == kind && i.updateable)
                .or_else(|| items.iter().find(|i| i.kind == kind)),
        };
        found.ok_or_else(|| {
            final_failure(
                "no_component",
                format!(
                    "the BMC's firmware inventory has no {} (it lists: {})",
                    component_name(&self.params.component),
                    items
                        .iter()
                        .map(|i| format!("{} ({})", i.name, i.kind))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    async fn run(self) -> std::result::Result<Done, Failure> {
        let mut conn = self.app.conn().await.map_err(db_failure)?;
        let saved = plinth_db::firmware::progress(&mut conn, self.j.id)
            .await
            .db()
            .map_err(db_failure)?;
        drop(conn);
        let mut p: Progress = saved
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let resumed = p.task.is_some() || p.pushes > 0;
        if resumed {
            tracing::info!(step = ?p.step, "resuming a firmware update");
        }

        if p.step == Step::Pushing {
            let items = read_inventory(self.app, self.j.machine_id, self.bmc, self.s).await?;
            let item = self.item(&items, p.target.as_deref())?.clone();
            if item.version.as_deref() == Some(self.params.version.as_str()) {
                // Installed already: before anything was pushed (nothing to do), or by a push
                // whose worker died before it could record the task.
                return Ok(self.done(&p, &item, p.pushes == 0));
            }
            if !item.updateable {
                return Err(final_failure(
                    "not_updateable",
                    format!("the BMC says {} ({}) cannot be updated", item.name, item.id),
                ));
            }
            p.target = Some(item.uri.clone());
            if p.before.is_none() {
                p.before = item.version.clone();
            }
            p.pushes += 1;
            self.save(&p).await?;
            let (method, task) = self.push(&item).await?;
            p.method = Some(method.into());
            p.task = Some(task);
            p.step = Step::Monitoring;
            self.save(&p).await?;
            self.event(
                "firmware_update_started",
                json!({
                    "job": self.j.id, "image": self.params.image_name, "component": self.params.component,
                    "item": item.id, "from": p.before, "to": self.params.version, "method": method,
                }),
            )
            .await;
        }

        if p.step == Step::Monitoring {
            self.monitor(&mut p).await?;
            p.needs_reboot = p.needs_reboot || self.params.component == "bios";
            p.step = Step::Activating;
            self.save(&p).await?;
        }

        if p.step == Step::Activating {
            if p.needs_reboot && !p.rebooted {
                self.reboot(&mut p).await?;
            }
            p.step = Step::Verifying;
            self.save(&p).await?;
        }

        let item = self.verify(&p).await?;
        if p.powered_on {
            call(
                self.s.call_timeout,
                "power off after the update",
                self.bmc.power(PowerAction::Off { force: true }),
            )
            .await?;
        }
        Ok(self.done(&p, &item, false))
    }

    fn done(&self, p: &Progress, item: &FirmwareItem, already: bool) -> Done {
        Done {
            result: json!({
                "image": self.params.image_name,
                "component": self.params.component,
                "item": item.id,
                "before": p.before.clone().or_else(|| item.version.clone()),
                "after": item.version,
                "already_installed": already,
                "method": p.method,
                "task": p.task,
                "messages": p.messages,
                "rebooted": p.rebooted,
                "pushes": p.pushes,
            }),
            power: None,
            identity: None,
        }
    }

    /// Sends the image; returns the method used and the BMC's task.
    async fn push(
        &self,
        item: &FirmwareItem,
    ) -> std::result::Result<(&'static str, UpdateTask), Failure> {
        let t = self.s.call_timeout;
        let caps = call(t, "read the update service", self.bmc.update_capabilities()).await?;
        let public = self
            .app
            .boot_env()
            .settings
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned());
        let simple_ok = caps.simple_update.is_some() && public.is_some();
        let push_ok = caps.multipart_push_uri.is_some() || caps.http_push_uri.is_some();
        let simple = match self.params.method {
            UpdateMethod::Simple if !simple_ok => {
                return Err(final_failure(
                    "unsupported",
                    if caps.simple_update.is_none() {
                        "the BMC has no SimpleUpdate".to_owned()
                    } else {
                        "SimpleUpdate needs boot.public_url: the URL the BMC fetches the image from"
                            .to_owned()
                    },
                ));
            }
            UpdateMethod::Simple => true,
            UpdateMethod::Push if !push_ok => {
                return Err(final_failure(
                    "unsupported",
                    "the BMC has no MultipartHttpPushUri nor HttpPushUri",
                ));
            }
            UpdateMethod::Push => false,
            UpdateMethod::Auto if simple_ok => true,
            UpdateMethod::Auto if push_ok => false,
            UpdateMethod::Auto => {
                return Err(final_failure(
                    "unsupported",
                    "the BMC takes no image plinth can give it: no multipart push, and no SimpleUpdate with boot.public_url set",
                ));
            }
        };
        let targets = vec![item.uri.clone()];
        if simple {
            let url = format!(
                "{}/firmware/{}/{}",
                public.unwrap_or_default(),
                self.j.id,
                self.params.token
            );
            let task = call(
                t.saturating_mul(2),
                "SimpleUpdate",
                self.bmc.simple_update(&url, &targets),
            )
            .await?;
            Ok(("simple_update", task))
        } else {
            let image = self.read_image().await?;
            let task = call(
                t.saturating_mul(20),
                "push the image",
                self.bmc.multipart_update(image, &targets),
            )
            .await?;
            Ok(("multipart_push", task))
        }
    }

    async fn read_image(&self) -> std::result::Result<Vec<u8>, Failure> {
        let mut conn = self.app.conn().await.map_err(db_failure)?;
        let img = plinth_db::firmware::image_by_id(&mut conn, self.params.image)
            .await
            .db()
            .map_err(db_failure)?
            .ok_or_else(|| {
                final_failure(
                    "config",
                    format!(
                        "the image {} is gone from the catalog",
                        self.params.image_name
                    ),
                )
            })?;
        let path = crate::files::resolve(&self.app.boot_env().settings.images_root, &img.path)
            .map_err(|r| final_failure("config", format!("the image's file: {r}")))?;
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| final_failure("config", format!("reading the image's file: {e}")))?;
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        if sha != img.sha256 {
            return Err(final_failure(
                "config",
                format!(
                    "the image's file changed since it was catalogued (SHA-256 {sha}, catalog {})",
                    img.sha256
                ),
            ));
        }
        Ok(bytes)
    }

    async fn monitor(&self, p: &mut Progress) -> std::result::Result<(), Failure> {
        let task = p
            .task
            .clone()
            .ok_or_else(|| final_failure("config", "no task to follow"))?;
        let deadline = tokio::time::Instant::now() + TASK_WAIT;
        loop {
            let st = call(
                self.s.call_timeout,
                "read the update task",
                self.bmc.task_status(&task),
            )
            .await?;
            let bucket = |x: Option<u8>| x.map(|x| x / 25);
            if bucket(st.percent) != bucket(p.percent) || st.messages != p.messages {
                p.percent = st.percent;
                p.messages = st.messages.clone();
                self.save(p).await?;
                if st.phase == TaskPhase::Running {
                    self.event(
                        "firmware_update_progress",
                        json!({ "job": self.j.id, "state": st.state, "percent": st.percent, "messages": st.messages }),
                    )
                    .await;
                }
            }
            match st.phase {
                TaskPhase::Completed => {
                    p.needs_reboot = st.needs_reboot;
                    return Ok(());
                }
                TaskPhase::Failed => {
                    return Err(final_failure(
                        "update_failed",
                        format!(
                            "the BMC's update task ended {}{}",
                            st.state,
                            if st.messages.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", st.messages.join("; "))
                            }
                        ),
                    ));
                }
                TaskPhase::Running => {}
            }
            if tokio::time::Instant::now() + self.s.power_poll > deadline {
                return Err(final_failure(
                    "update_timeout",
                    format!(
                        "the BMC's update task is still {} after {} min",
                        st.state,
                        TASK_WAIT.as_secs() / 60
                    ),
                ));
            }
            tokio::time::sleep(self.s.power_poll).await;
        }
    }

    /// Resets the machine to activate the image (on, for one that was off).
    async fn reboot(&self, p: &mut Progress) -> std::result::Result<(), Failure> {
        let t = self.s.call_timeout;
        let power = call(t, "read power state", self.bmc.power_state()).await?;
        let action = if power == PowerState::Off {
            p.powered_on = true;
            PowerAction::On
        } else {
            PowerAction::Reset
        };
        // Recorded first: a resumed job does not reset the machine a second time.
        p.rebooted = true;
        self.save(p).await?;
        call(t, "reset to activate the image", self.bmc.power(action)).await?;
        self.event(
            "firmware_update_reset",
            json!({ "job": self.j.id, "action": if p.powered_on { "on" } else { "reset" } }),
        )
        .await;
        Ok(())
    }

    /// Reads the inventory until the item reports the image's version, or `power_wait`.
    async fn verify(&self, p: &Progress) -> std::result::Result<FirmwareItem, Failure> {
        let deadline = tokio::time::Instant::now() + self.s.power_wait;
        loop {
            let items = read_inventory(self.app, self.j.machine_id, self.bmc, self.s).await?;
            let item = self.item(&items, p.target.as_deref())?.clone();
            if item.version.as_deref() == Some(self.params.version.as_str()) {
                return Ok(item);
            }
            if tokio::time::Instant::now() + self.s.power_poll > deadline {
                return Err(final_failure(
                    "version_mismatch",
                    format!(
                        "BMC reported success but {} still reads {} (expected {})",
                        component_name(&self.params.component),
                        item.version.as_deref().unwrap_or("no version"),
                        self.params.version
                    ),
                ));
            }
            tokio::time::sleep(self.s.power_poll).await;
        }
    }
}
