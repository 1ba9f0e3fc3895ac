//! What a network-booted machine runs once iPXE asks plinth for its script: the decision (a
//! pure function of the machine's lifecycle state, [`script_decision`], which reads the
//! state's [`NetBoot`] in plinth-types' behaviour table), the templates that
//! turn it into an iPXE script (shipped defaults, overridable from a directory), and
//! [`App::boot_script`], which looks the machine up, hands the agent a one-time token and
//! records the request as an event.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_types::behaviour::NetBoot;
use plinth_types::netboot::{self, PxeArch};
use plinth_types::{Error, MacAddr, MachineState, Verb};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::{generate_secret, hash_secret};
use crate::dhcp::{ClientInfo, UnknownPolicy};
use crate::{App, DbResult, Result};

/// What `ready` and `allocated` machines are told when they network-boot anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleBoot {
    LocalDisk,
    PowerOff,
}

/// The mode the ramdisk's agent runs in (defined once, in plinth-types, for the agent too).
pub use plinth_types::AgentMode;

/// BIOS or UEFI, as far as the boot script is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    Bios,
    Efi,
}

impl Firmware {
    /// From iPXE's `${platform}` (`pcbios`, `efi`), else from the architecture the machine's
    /// DHCP requests carried (option 93), else BIOS.
    pub fn detect(platform: Option<&str>, pxe_arch: Option<i32>) -> Firmware {
        match platform {
            Some("efi") => return Firmware::Efi,
            Some("pcbios") => return Firmware::Bios,
            _ => {}
        }
        match pxe_arch.and_then(|a| u16::try_from(a).ok()) {
            Some(code) if PxeArch::is_uefi(code) => Firmware::Efi,
            _ => Firmware::Bios,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Efi => "efi",
        }
    }
}

/// What the script makes the machine do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptAction {
    /// Boot the plinth ramdisk, its agent in this mode.
    Ramdisk(AgentMode),
    /// Boot from the local disk.
    LocalBoot,
    /// Power off (iPXE builds without `poweroff` fall through to the next boot device).
    PowerOff,
    /// Boot nothing: say why, wait, and hand back to the firmware.
    Wait(String),
}

/// The boot decision for a script request, as a pure function of the state's [`NetBoot`] and
/// the two settings it leaves open. `state` is `None` for a MAC in no inventory, which is
/// treated as the discovered machine it is about to become.
pub fn script_decision(
    state: Option<MachineState>,
    unknown: UnknownPolicy,
    idle: IdleBoot,
) -> ScriptAction {
    let state = state.unwrap_or(Verb::Discover.target());
    match state.behaviour().netboot {
        NetBoot::Ramdisk(mode) => ScriptAction::Ramdisk(mode),
        NetBoot::Discovery => match unknown {
            UnknownPolicy::Boot => ScriptAction::Ramdisk(AgentMode::Inspect),
            UnknownPolicy::Record => ScriptAction::Wait(
                "this machine is recorded as discovered; a technician has to adopt it".to_owned(),
            ),
        },
        NetBoot::Idle => match idle {
            IdleBoot::LocalDisk => ScriptAction::LocalBoot,
            IdleBoot::PowerOff => ScriptAction::PowerOff,
        },
        NetBoot::LocalDisk => ScriptAction::LocalBoot,
        NetBoot::Nothing(why) => ScriptAction::Wait(why.to_owned()),
    }
}

/// The `[boot]` settings (and the images root they point into).
#[derive(Debug, Clone)]
pub struct BootSettings {
    pub images_root: PathBuf,
    /// Base URL machines reach plinth's HTTP server at; default: the request's Host.
    pub public_url: Option<String>,
    /// Kernel and initrd of the ramdisk, relative to the images root.
    pub kernel: String,
    pub initrd: String,
    pub console: String,
    /// Appended to the ramdisk's kernel command line.
    pub kernel_args: String,
    pub local_boot_bios: String,
    pub local_boot_efi: String,
    pub idle: IdleBoot,
    pub unknown_machines: UnknownPolicy,
    pub agent_token_ttl: Duration,
    /// Seconds a script that boots nothing (or failed) waits before handing back.
    pub retry_secs: u32,
    /// Boot-loop guard: more than `loop_max` requests within `loop_window` is flagged.
    pub loop_max: u32,
    pub loop_window: Duration,
    /// Files (relative to the images root) the configuration boots besides the kernel and
    /// initrd, e.g. the iPXE binaries DHCP hands out: catalog entries naming them cannot be
    /// deleted.
    pub in_use: Vec<String>,
    /// How cleaning wipes disks where a pool does not say (`[clean]`).
    pub clean: crate::clean::CleanSettings,
    /// The largest image upload.
    pub max_upload_bytes: u64,
    /// The largest a compressed disk image may decompress to.
    pub max_raw_bytes: u64,
}

impl BootSettings {
    /// The defaults, for an images root.
    pub fn with_root(images_root: PathBuf) -> BootSettings {
        BootSettings {
            images_root,
            public_url: None,
            kernel: "plinth/vmlinuz".into(),
            initrd: "plinth/initrd.img".into(),
            console: "console=tty0 console=ttyS0,115200n8".into(),
            // The kernel echoes its command line (the agent token in it) at notice level.
            kernel_args: "loglevel=4".into(),
            local_boot_bios: "sanboot --no-describe --drive 0x80".into(),
            local_boot_efi: "exit".into(),
            idle: IdleBoot::LocalDisk,
            unknown_machines: UnknownPolicy::Boot,
            agent_token_ttl: Duration::from_secs(3600),
            retry_secs: 60,
            loop_max: 10,
            loop_window: Duration::from_secs(600),
            clean: crate::clean::CleanSettings::default(),
            in_use: vec![
                "undionly.kpxe".into(),
                "ipxe.efi".into(),
                "snponly.efi".into(),
            ],
            max_upload_bytes: 64 << 30,
            max_raw_bytes: 4 << 40,
        }
    }
}

/// The shipped templates: (name, text).
pub const DEFAULT_TEMPLATES: &[(&str, &str)] = &[
    (
        "ramdisk.ipxe",
        include_str!("../templates/boot/ramdisk.ipxe"),
    ),
    (
        "localboot.ipxe",
        include_str!("../templates/boot/localboot.ipxe"),
    ),
    (
        "poweroff.ipxe",
        include_str!("../templates/boot/poweroff.ipxe"),
    ),
    ("wait.ipxe", include_str!("../templates/boot/wait.ipxe")),
    ("chain.ipxe", include_str!("../templates/boot/chain.ipxe")),
];

/// A template that does not parse or does not render. Its Display names the template.
#[derive(Debug, Clone, thiserror::Error)]
#[error("boot template {template}: {message}")]
pub struct TemplateError {
    pub template: String,
    pub message: String,
}

/// The boot templates: the shipped defaults, each replaced by a file of the same name in the
/// override directory when there is one. Loaded (and checked) once, at start.
pub struct Templates {
    env: minijinja::Environment<'static>,
    /// Where each template came from (`shipped` or a path), for logs.
    pub origins: BTreeMap<String, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("origins", &self.origins)
            .finish()
    }
}

impl Templates {
    pub fn load(override_dir: Option<&Path>) -> std::result::Result<Templates, TemplateError> {
        let mut env = minijinja::Environment::new();
        // A variable the template names but the context lacks is an error, not an empty
        // string: a script with a blank kernel URL would be worse than a 500.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let mut origins = BTreeMap::new();
        for (name, shipped) in DEFAULT_TEMPLATES {
            let (text, origin) = match override_dir.map(|d| d.join(name)) {
                Some(p) if p.exists() => {
                    let text = std::fs::read_to_string(&p).map_err(|e| TemplateError {
                        template: p.display().to_string(),
                        message: format!("cannot be read: {e}"),
                    })?;
                    (text, p.display().to_string())
                }
                _ => ((*shipped).to_owned(), "shipped".to_owned()),
            };
            env.add_template_owned(*name, text)
                .map_err(|e| TemplateError {
                    template: origin.clone(),
                    message: template_message(&e),
                })?;
            origins.insert((*name).to_owned(), origin);
        }
        Ok(Templates { env, origins })
    }

    /// Renders one template with `ctx`; an error names the template and never yields half a
    /// script.
    pub fn render(
        &self,
        name: &str,
        ctx: &impl Serialize,
    ) -> std::result::Result<String, TemplateError> {
        let err = |e: minijinja::Error| TemplateError {
            template: format!(
                "{name} ({})",
                self.origins.get(name).map_or("unknown", String::as_str)
            ),
            message: template_message(&e),
        };
        self.env
            .get_template(name)
            .map_err(err)?
            .render(ctx)
            .map_err(err)
    }
}

fn template_message(e: &minijinja::Error) -> String {
    let mut m = e.to_string();
    if let Some(line) = e.line() {
        m.push_str(&format!(" (line {line})"));
    }
    m
}

/// A script request, as iPXE sends it.
#[derive(Debug, Clone, Default)]
pub struct BootRequest {
    pub mac: Option<String>,
    pub uuid: Option<String>,
    /// iPXE `${buildarch}` (i386, x86_64, arm64).
    pub arch: Option<String>,
    /// iPXE `${platform}` (pcbios, efi).
    pub platform: Option<String>,
    pub serial: Option<String>,
    pub remote: Option<IpAddr>,
    /// Base URL the request came in on (from its Host header), used when no public_url is set.
    pub request_base: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScriptMachine {
    pub id: Uuid,
    pub hostname: Option<String>,
    pub state: String,
    pub mac: String,
    /// Hostname, else the id: how the script's messages name the machine.
    pub label: String,
}

/// Everything a boot template may use. Fields that do not apply are empty strings, so that
/// operators' templates may name any of them.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptContext {
    pub machine: ScriptMachine,
    pub firmware: &'static str,
    pub mode: &'static str,
    pub base_url: String,
    pub api_url: String,
    pub token: String,
    pub kernel_url: String,
    pub initrd_url: String,
    pub initrd_name: String,
    pub console: String,
    pub kernel_args: String,
    pub local_boot: String,
    pub reason: String,
    pub retry_secs: u32,
}

/// A rendered decision: which template, with what.
#[derive(Debug, Clone)]
pub struct Script {
    pub template: &'static str,
    pub action: ScriptAction,
    pub context: ScriptContext,
}

/// The template for an action.
pub fn template_for(action: &ScriptAction) -> &'static str {
    match action {
        ScriptAction::Ramdisk(_) => "ramdisk.ipxe",
        ScriptAction::LocalBoot => "localboot.ipxe",
        ScriptAction::PowerOff => "poweroff.ipxe",
        ScriptAction::Wait(_) => "wait.ipxe",
    }
}

/// The context for a decision, as a pure function (the token is minted by the caller).
pub fn script_context(
    action: &ScriptAction,
    machine: ScriptMachine,
    firmware: Firmware,
    base_url: &str,
    token: Option<&str>,
    s: &BootSettings,
) -> ScriptContext {
    let base = base_url.trim_end_matches('/').to_owned();
    let file_url = |p: &str| netboot::file_url(&base, p);
    let initrd_name = s.initrd.rsplit('/').next().unwrap_or(&s.initrd).to_owned();
    let (mode, reason) = match action {
        ScriptAction::Ramdisk(m) => (m.as_str(), String::new()),
        ScriptAction::Wait(r) => ("", r.clone()),
        _ => ("", String::new()),
    };
    ScriptContext {
        firmware: firmware.as_str(),
        mode,
        api_url: base.clone(),
        token: token.unwrap_or_default().to_owned(),
        kernel_url: file_url(&s.kernel),
        initrd_url: file_url(&s.initrd),
        initrd_name,
        console: s.console.clone(),
        kernel_args: s.kernel_args.clone(),
        local_boot: match firmware {
            Firmware::Bios => s.local_boot_bios.clone(),
            Firmware::Efi => s.local_boot_efi.clone(),
        },
        reason,
        retry_secs: s.retry_secs,
        base_url: base,
        machine,
    }
}

/// The message of the `boot` event a request leaves on the machine.
pub fn event_message(action: &ScriptAction) -> String {
    match action {
        ScriptAction::Ramdisk(AgentMode::Inspect) => "booted inspection image".into(),
        ScriptAction::Ramdisk(AgentMode::Clean) => "booted cleaning image".into(),
        ScriptAction::Ramdisk(AgentMode::Deploy) => "booted deploy image".into(),
        ScriptAction::LocalBoot => "sent to boot from local disk".into(),
        ScriptAction::PowerOff => "told to power off".into(),
        ScriptAction::Wait(why) => format!("booted nothing: {why}"),
    }
}

/// A bad request from a booting machine, as a script that says why and waits (for iPXE,
/// which would otherwise retry at once), with the error for other clients.
pub fn refusal_context(reason: &str, s: &BootSettings) -> ScriptContext {
    script_context(
        &ScriptAction::Wait(reason.to_owned()),
        ScriptMachine {
            id: Uuid::nil(),
            hostname: None,
            state: String::new(),
            mac: String::new(),
            label: String::new(),
        },
        Firmware::Bios,
        "",
        None,
        s,
    )
}

fn clean_param(name: &'static str, v: &Option<String>, max: usize) -> Result<Option<String>> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) if s.len() > max || s.chars().any(|c| c.is_control()) => Err(Error::invalid(
            "bad_boot_parameter",
            format!("parameter {name} is malformed"),
        )),
        Some(s) => Ok(Some(s.to_owned())),
    }
}

/// [`script_decision`] for every lifecycle state, in the shape the database function takes.
pub fn state_table(s: &BootSettings) -> plinth_db::boot::StateTable {
    let mut t = plinth_db::boot::StateTable::default();
    for state in MachineState::ALL {
        let action = script_decision(Some(state), s.unknown_machines, s.idle);
        t.states.push(state.as_str().to_owned());
        t.modes.push(match &action {
            ScriptAction::Ramdisk(m) => Some(m.as_str().to_owned()),
            _ => None,
        });
        t.messages.push(event_message(&action));
        t.scripts.push(template_for(&action).to_owned());
    }
    t
}

/// Script requests arriving together are recorded together: one worker per instance takes
/// whatever is queued (up to [`MAX_BATCH`]) and records it with one `boot_request_batch` call,
/// one round trip and one transaction, as the DHCP server does with lease decisions.
#[derive(Debug)]
pub struct BootQueue {
    tx: tokio::sync::mpsc::Sender<Queued>,
}

#[derive(Debug)]
struct Queued {
    item: plinth_db::boot::BatchItem,
    reply: tokio::sync::oneshot::Sender<Result<Option<plinth_db::boot::BootRow>>>,
}

/// The most requests one batch records.
pub const MAX_BATCH: usize = 64;

async fn boot_worker(
    pool: plinth_db::PgPool,
    env: std::sync::Arc<crate::BootEnv>,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        // One lock order for every instance's batches: by MAC.
        batch.sort_by(|a, b| a.item.mac.cmp(&b.item.mac));
        let (items, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|q| (q.item, q.reply)).unzip();
        let results = record_batch(&pool, &env, &items).await;
        for (reply, r) in replies.into_iter().zip(results) {
            reply.send(r).ok();
        }
    }
}

fn batch_params(env: &crate::BootEnv) -> plinth_db::boot::BatchParams<'_> {
    plinth_db::boot::BatchParams {
        table: &env.table,
        token_secs: env.settings.agent_token_ttl.as_secs_f64(),
        loop_max: i32::try_from(env.settings.loop_max).unwrap_or(i32::MAX - 1),
        loop_window_secs: env.settings.loop_window.as_secs_f64(),
    }
}

/// Records a batch; if the batch as a whole fails (a deadlock with another instance, say), each
/// request is retried on its own so that one cannot fail the others.
async fn record_batch(
    pool: &plinth_db::PgPool,
    env: &crate::BootEnv,
    items: &[plinth_db::boot::BatchItem],
) -> Vec<Result<Option<plinth_db::boot::BootRow>>> {
    let attempt = async {
        let mut conn = pool.acquire().await?;
        plinth_db::boot::request_batch(&mut conn, items, batch_params(env)).await
    };
    match attempt.await {
        Ok(rows) => rows.into_iter().map(Ok).collect(),
        Err(e) if items.len() == 1 => vec![Err(plinth_db::classify(e))],
        Err(e) => {
            tracing::warn!(error = %e, n = items.len(), "a boot batch failed; recording its requests one by one");
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                let one = async {
                    let mut conn = pool.acquire().await?;
                    plinth_db::boot::request_batch(
                        &mut conn,
                        std::slice::from_ref(it),
                        batch_params(env),
                    )
                    .await
                };
                out.push(
                    one.await
                        .map(|mut v| v.pop().flatten())
                        .map_err(plinth_db::classify),
                );
            }
            out
        }
    }
}

impl App {
    /// Records one script request through the batch worker (started on first use, on the
    /// runtime of the caller).
    async fn boot_record(
        &self,
        item: plinth_db::boot::BatchItem,
    ) -> Result<Option<plinth_db::boot::BootRow>> {
        let queue = self.boot.queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
            tokio::spawn(boot_worker(self.pool.clone(), self.boot.clone(), rx));
            BootQueue { tx }
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        match queue.tx.send(Queued { item, reply }).await {
            Ok(()) => answer.await.map_err(|_| Error::internal())?,
            // The worker's runtime is gone (an App shared between runtimes): record directly.
            Err(tokio::sync::mpsc::error::SendError(q)) => {
                record_batch(&self.pool, &self.boot, std::slice::from_ref(&q.item))
                    .await
                    .pop()
                    .unwrap_or(Ok(None))
            }
        }
    }

    /// The script for the machine asking: decided from its state, with a fresh agent token
    /// when it boots the ramdisk, recorded as a `boot` event (and a `boot_loop` event when it
    /// asks too often). One database round trip for a known machine.
    pub async fn boot_script(&self, req: &BootRequest, s: &BootSettings) -> Result<Script> {
        let mac_raw = req.mac.as_deref().map(str::trim).unwrap_or("");
        if mac_raw.is_empty() {
            return Err(Error::invalid(
                "missing_mac",
                "the mac parameter is required (iPXE: ?mac=${net0/mac})",
            ));
        }
        let mac: MacAddr = mac_raw.parse().map_err(|_| {
            Error::invalid(
                "bad_mac",
                format!("{:?} is not a MAC address", truncate(mac_raw, 40)),
            )
        })?;
        let platform = clean_param("platform", &req.platform, 16)?;
        let arch = clean_param("arch", &req.arch, 16)?;
        let uuid = clean_param("uuid", &req.uuid, 64)?;
        let serial = clean_param("serial", &req.serial, 128)?;
        let base = s
            .public_url
            .clone()
            .or_else(|| req.request_base.clone())
            .ok_or_else(|| {
                Error::invalid(
                    "no_public_url",
                    "boot.public_url is not set and the request has no Host header",
                )
            })?;
        let known_firmware = platform
            .as_deref()
            .filter(|p| matches!(*p, "efi" | "pcbios"))
            .map(|p| Firmware::detect(Some(p), None).as_str());
        let actor = match req.remote {
            Some(ip) => format!("ipxe@{ip}"),
            None => "ipxe".to_owned(),
        };
        let details = serde_json::json!({
            "mac": mac.to_string(), "firmware": known_firmware, "platform": platform,
            "arch": arch, "uuid": uuid, "serial": serial,
            "remote": req.remote.map(|r| r.to_string()),
        });
        // Minted for every request (cheap); stored only when the state boots the ramdisk.
        let secret = generate_secret();
        let hash = hash_secret(&secret);
        let mac_text = mac.to_string();
        let remote = req.remote.map(crate::agent::ip_text);
        let item = |details: serde_json::Value| plinth_db::boot::BatchItem {
            mac: mac_text.clone(),
            remote: remote.clone(),
            actor: actor.clone(),
            details,
            token_sha256: hash.to_vec(),
        };
        let mut row = self.boot_record(item(details.clone())).await?;
        if row.is_none() && s.unknown_machines == UnknownPolicy::Boot {
            // Normally DHCP recorded it already; a machine booted by another DHCP server
            // (ProxyDHCP, static iPXE) is discovered here.
            let client = ClientInfo {
                ipxe: true,
                arch: platform.as_deref().map(|p| {
                    if p == "efi" {
                        netboot::UEFI_X64
                    } else {
                        netboot::BIOS
                    }
                }),
                uuid: uuid.as_deref().and_then(|u| u.parse().ok()),
                ..ClientInfo::default()
            };
            self.discover_machine(&mac, &client, None).await?;
            row = self.boot_record(item(details)).await?;
        }
        let Some(row) = row else {
            // Unknown and not to be booted: nothing to record it on.
            let ctx = refusal_context(
                "this machine is not in plinth's inventory and discovery does not boot it",
                s,
            );
            return Ok(Script {
                template: "wait.ipxe",
                action: ScriptAction::Wait(ctx.reason.clone()),
                context: ctx,
            });
        };
        let state = row.state;
        let mut action = script_decision(Some(state), s.unknown_machines, s.idle);
        if matches!(action, ScriptAction::Ramdisk(_)) && !row.token_stored {
            action = ScriptAction::Wait(if row.token_refused {
                // Someone else's boot, or this machine from an address it was not given: no
                // token. The machine's own boot, from its address, is not held up by this.
                tracing::warn!(machine_id = %row.machine_id, %mac, remote = ?req.remote, "boot script request from an address the machine's token may not be bound to: no token");
                "this boot is bound to another address: waiting (see the machine's events)"
                    .to_owned()
            } else {
                // Requests of one machine that arrived together: the last one has the token.
                "another request of this boot has the agent token: waiting".to_owned()
            });
        }
        let firmware = Firmware::detect(platform.as_deref(), row.pxe_arch);
        if row.loop_flagged {
            tracing::warn!(machine_id = %row.machine_id, %mac, requests = row.requests, window_secs = s.loop_window.as_secs(), "boot loop: the machine keeps asking for its script");
        }
        let message = event_message(&action);
        // The boot event is the record; the log line is for debugging.
        tracing::debug!(machine_id = %row.machine_id, %mac, state = %row.state, firmware = firmware.as_str(), "{message}");
        let label = row
            .hostname
            .clone()
            .unwrap_or_else(|| row.machine_id.to_string());
        let machine = ScriptMachine {
            id: row.machine_id,
            hostname: row.hostname,
            state: row.state.as_str().to_owned(),
            mac: mac_text,
            label,
        };
        let context = script_context(
            &action,
            machine,
            firmware,
            &base,
            row.token_stored.then_some(secret.as_str()),
            s,
        );
        Ok(Script {
            template: template_for(&action),
            action,
            context,
        })
    }

    /// The agent token behind a secret, if it is live for this machine and mode (see
    /// [`crate::agent::refusal`], the one place the rules are written). For tests (feature
    /// `testing`): the API checks tokens through the agent endpoints.
    #[cfg(feature = "testing")]
    pub async fn check_agent_token(
        &self,
        secret: &str,
        machine_id: Uuid,
        mode: &str,
    ) -> Result<plinth_db::boot::AgentTokenRow> {
        let mut conn = self.conn().await?;
        let row = plinth_db::boot::agent_token(&mut conn, &hash_secret(secret))
            .await
            .db()?
            .ok_or_else(|| Error::unauthorized("unknown agent token"))?;
        match crate::agent::refusal(&row, machine_id, mode) {
            Some(e) => Err(e),
            None => Ok(row),
        }
    }

    /// Forgets agent tokens long expired (a reconciler pass).
    pub async fn purge_agent_tokens(&self) -> Result<u64> {
        let mut conn = self.conn().await?;
        plinth_db::boot::purge_agent_tokens(&mut conn).await.db()
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_table() {
        use MachineState as S;
        let ram = |m| ScriptAction::Ramdisk(m);
        let expected: &[(Option<S>, ScriptAction)] = &[
            (None, ram(AgentMode::Inspect)),
            (Some(S::Discovered), ram(AgentMode::Inspect)),
            (Some(S::Inspecting), ram(AgentMode::Inspect)),
            (Some(S::Cleaning), ram(AgentMode::Clean)),
            (Some(S::Decommissioning), ram(AgentMode::Clean)),
            (Some(S::Deploying), ram(AgentMode::Deploy)),
            (Some(S::Deployed), ScriptAction::LocalBoot),
            (Some(S::Ready), ScriptAction::LocalBoot),
            (Some(S::Allocated), ScriptAction::LocalBoot),
        ];
        for (state, action) in expected {
            assert_eq!(
                &script_decision(*state, UnknownPolicy::Boot, IdleBoot::LocalDisk),
                action,
                "{state:?}"
            );
        }
        // Every other state boots nothing, and says why.
        for s in MachineState::ALL {
            let a = script_decision(Some(s), UnknownPolicy::Boot, IdleBoot::LocalDisk);
            if !expected.iter().any(|(st, _)| *st == Some(s)) {
                assert!(
                    matches!(a, ScriptAction::Wait(ref why) if !why.is_empty()),
                    "{s:?}: {a:?}"
                );
            }
        }
        assert_eq!(
            script_decision(Some(S::Ready), UnknownPolicy::Boot, IdleBoot::PowerOff),
            ScriptAction::PowerOff
        );
        assert_eq!(
            script_decision(Some(S::Deployed), UnknownPolicy::Boot, IdleBoot::PowerOff),
            ScriptAction::LocalBoot,
            "a deployed machine always boots its disk"
        );
        for s in [None, Some(S::Discovered)] {
            assert!(matches!(
                script_decision(s, UnknownPolicy::Record, IdleBoot::LocalDisk),
                ScriptAction::Wait(_)
            ));
        }
    }

    #[test]
    fn firmware_from_platform_then_dhcp_arch() {
        assert_eq!(Firmware::detect(Some("efi"), Some(0)), Firmware::Efi);
        assert_eq!(Firmware::detect(Some("pcbios"), Some(7)), Firmware::Bios);
        assert_eq!(Firmware::detect(None, Some(7)), Firmware::Efi);
        assert_eq!(Firmware::detect(None, Some(0)), Firmware::Bios);
        assert_eq!(Firmware::detect(None, None), Firmware::Bios);
    }

    #[test]
    fn broken_override_templates_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wait.ipxe"), "#!ipxe\necho {{ reason }\n").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("wait.ipxe"), "{e}");
        // Parses, but names a variable the context lacks: a render error naming it, no text.
        std::fs::write(
            dir.path().join("wait.ipxe"),
            "#!ipxe\necho {{ reason }}\necho {{ no_such_thing }}\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert!(t.origins["wait.ipxe"].ends_with("wait.ipxe"));
        assert_eq!(t.origins["ramdisk.ipxe"], "shipped");
        let s = BootSettings::with_root(PathBuf::from("/srv"));
        let e = t
            .render("wait.ipxe", &refusal_context("x", &s))
            .unwrap_err();
        assert!(e.to_string().contains("wait.ipxe"), "{e}");
        assert!(
            e.to_string().contains("no_such_thing") || e.message.contains("undefined"),
            "{e}"
        );
    }
}
