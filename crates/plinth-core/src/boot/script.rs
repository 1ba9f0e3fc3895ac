//! [`App::boot_script`]: a script request as iPXE sends it, checked, recorded (`record`: the
//! lookup by MAC, the `boot` event, the agent token, the boot-loop count, in one batched
//! database call), decided (`decision`) and turned into the context a template renders.

use std::net::IpAddr;

use plinth_types::netboot;
use plinth_types::{Error, ErrorKind, MacAddr};
use serde::Serialize;
use uuid::Uuid;

use super::{BootSettings, Firmware, ScriptAction, event_message, script_decision, template_for};
use crate::auth::{generate_secret, hash_secret};
use crate::dhcp::{ClientInfo, UnknownPolicy};
use crate::{App, Result};

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
    /// The ramdisk's kernel command line after the kernel and initrd ([`ramdisk_args`]): the
    /// same for the iPXE script and the virtual-media ISO's grub.cfg.
    pub ramdisk_args: String,
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
    let token = token.unwrap_or_default().to_owned();
    ScriptContext {
        firmware: firmware.as_str(),
        mode,
        api_url: base.clone(),
        ramdisk_args: ramdisk_args(&s.console, mode, &base, machine.id, &token, &s.kernel_args),
        token,
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

/// The ramdisk's kernel arguments (console, mode, API URL, machine, agent token, then the
/// configured extra arguments), built in this one place for every way the ramdisk boots.
pub fn ramdisk_args(
    console: &str,
    mode: &str,
    api_url: &str,
    machine: Uuid,
    token: &str,
    extra: &str,
) -> String {
    let mut args = format!(
        "{console} plinth.mode={mode} plinth.api={api_url} plinth.machine={machine} plinth.token={token}"
    );
    if !extra.is_empty() {
        args.push(' ');
        args.push_str(extra);
    }
    args
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

impl App {
    /// The script for the machine asking: decided from its state, with a fresh agent token
    /// when it boots the ramdisk, recorded as a `boot` event (and a `boot_loop` event when it
    /// asks too often). One database round trip for a known machine.
    /// The script for a request (`GET /boot/ipxe`), counted in `plinth_boot_scripts_total`.
    pub async fn boot_script(&self, req: &BootRequest, s: &BootSettings) -> Result<Script> {
        let result = self.boot_script_uncounted(req, s).await;
        let outcome = match &result {
            Ok(script) => script.template.trim_end_matches(".ipxe"),
            Err(e) if matches!(e.kind, ErrorKind::Internal | ErrorKind::Unavailable) => "error",
            Err(_) => "refused",
        };
        self.metrics().boot_script(outcome);
        result
    }

    async fn boot_script_uncounted(&self, req: &BootRequest, s: &BootSettings) -> Result<Script> {
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
        let details = BootDetails {
            mac,
            firmware: known_firmware,
            platform: platform.as_deref(),
            arch: arch.as_deref(),
            uuid: uuid.as_deref(),
            serial: serial.as_deref(),
            remote: req.remote,
        };
        let details = serde_json::to_string(&details).map_err(|e| {
            tracing::error!(error = %e, "boot event details");
            Error::internal()
        })?;
        // Minted for every request (cheap); stored only when the state boots the ramdisk.
        let secret = generate_secret();
        let hash = hash_secret(&secret);
        let item = |details: String| plinth_db::boot::BatchItem {
            mac,
            // Canonical: an IPv4 peer on a dual-stack socket is its IPv4 address.
            remote: req.remote.map(|r| r.to_canonical()),
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
                // (throttled: anyone can send these; the capped events record them per machine)
                static SPOOF: plinth_types::logthrottle::LogThrottle =
                    plinth_types::logthrottle::LogThrottle::new(
                        10,
                        std::time::Duration::from_secs(10),
                    );
                if let Some(suppressed) = SPOOF.check() {
                    tracing::warn!(machine_id = %row.machine_id, %mac, remote = ?req.remote, suppressed, "boot script request from an address the machine's token may not be bound to: no token");
                }
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
            mac: mac.to_string(),
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
}

/// What a `boot` event records of the request (its `details`; the batch adds the message and
/// the script sent). Serialized once per request, straight to the text the database reads.
#[derive(serde::Serialize)]
struct BootDetails<'a> {
    mac: MacAddr,
    firmware: Option<&'static str>,
    platform: Option<&'a str>,
    arch: Option<&'a str>,
    uuid: Option<&'a str>,
    serial: Option<&'a str>,
    remote: Option<std::net::IpAddr>,
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
