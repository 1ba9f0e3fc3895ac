//! What the ramdisk agent reports: its inspection facts and the outcome of cleaning. The agent
//! authenticates with the one-time token its boot script carried: valid for one machine, one
//! mode and a limited time, used up by the final report (in the report's transaction), revoked
//! by a newer token or by any state change, and bound to the address its script was served to
//! (see `boot`): a call from another address is refused, unless plinth leases that address to
//! another NIC of the same machine (a ramdisk may route through another NIC than it booted
//! from). A token presented for another machine or mode, again, late, revoked or from another
//! address is refused and recorded as an `agent_token_refused` event. People and automation
//! with an API token may report too.

use plinth_types::MachineId;
use std::net::IpAddr;

use chrono::Utc;
use plinth_types::api::{CleanReport, CleanResult, InspectionReport, Machine};
use plinth_types::behaviour::Outcome;
use plinth_types::{AgentMode, Error, MachineState};
use serde_json::json;
use uuid::Uuid;

use crate::auth::{Permission, hash_secret};
use crate::lifecycle::{report_outcome, validate_report};
use crate::machines::not_found;
use crate::{App, DbResult, Principal, Result};

/// Why a machine's agent token may not report in `mode`: another mode's, used, revoked or
/// expired. `None`: it may. (Tokens are found by the machine a call names, so a token of
/// another machine never gets here: `plinth_db::boot::agent_token`.)
pub(crate) fn refusal(row: &plinth_db::boot::AgentTokenRow, mode: &str) -> Option<Error> {
    if row.mode.as_str() != mode {
        Some(Error::forbidden(format!(
            "this agent token is for {} mode, not {mode}",
            row.mode
        )))
    } else if row.used_at.is_some() {
        Some(Error::unauthorized("this agent token was already used"))
    } else if row.revoked_at.is_some() {
        Some(Error::unauthorized(format!(
            "this agent token was revoked: {}",
            row.revoked_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        )))
    } else if row.expires_at < Utc::now() {
        Some(Error::unauthorized("this agent token has expired"))
    } else {
        None
    }
}

/// Who is reporting.
pub(crate) enum Reporter {
    /// The agent, with its token's hash (used up with the report).
    Agent {
        hash: [u8; 32],
        principal: Principal,
    },
    Person(Principal),
}

impl Reporter {
    /// Who reports, and the agent token's hash to use up with the report (none for a person).
    fn into_parts(self) -> (Principal, Option<[u8; 32]>) {
        match self {
            Reporter::Person(p) => (p, None),
            Reporter::Agent { hash, principal } => (principal, Some(hash)),
        }
    }
}

/// The reason of a failed report (`default` when the agent gave none); none for a success.
fn failure_reason(result: CleanResult, reason: &Option<String>, default: &str) -> Option<String> {
    match result {
        CleanResult::Complete => None,
        CleanResult::Failed => Some(reason.clone().unwrap_or_else(|| default.to_owned())),
    }
}

/// An address as the database writes it (`host()`), IPv4-mapped IPv6 addresses as IPv4.
pub(crate) fn ip_text(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

impl App {
    /// Whether a token bound to `row.bound_ip` may be used from `peer`: the same address (both
    /// unknown only for a token minted without an address, in tests that call the router
    /// directly), or one plinth leases to another NIC of the token's machine.
    async fn address_ok(
        &self,
        row: &plinth_db::boot::AgentTokenRow,
        peer: Option<IpAddr>,
    ) -> Result<bool> {
        let peer = peer.map(|p| p.to_canonical());
        if row.bound_ip.map(|b| b.to_canonical()) == peer {
            return Ok(true);
        }
        let Some(peer) = peer else {
            return Ok(false);
        };
        let mut conn = self.conn().await?;
        plinth_db::boot::machine_holds_address(&mut conn, row.machine_id, peer)
            .await
            .db()
    }

    pub(crate) async fn reporter(
        &self,
        secret: &str,
        id: Uuid,
        mode: AgentMode,
        peer: Option<IpAddr>,
    ) -> Result<Reporter> {
        let mode = mode.as_str();
        if secret.is_empty() || secret.len() > 256 {
            return Err(Error::unauthorized("invalid token"));
        }
        let hash = hash_secret(secret);
        let row = {
            let mut conn = self.conn().await?;
            plinth_db::boot::agent_token(&mut conn, id, &hash)
                .await
                .db()?
        };
        let Some(row) = row else {
            // Not this machine's agent token (nor the one its token replaced): a person's or
            // automation's API token, or a refusal. Another machine's token is refused here
            // too: tokens are found by the machine a call names, never by their hash alone.
            let p = match self.authenticate(secret).await {
                Ok(p) => p,
                Err(e) if e.message == crate::auth::UNKNOWN_API_TOKEN => {
                    let why = "not an agent token of this machine, nor an API token";
                    self.record_refusal(id, false, mode, why, peer).await;
                    return Err(Error::unauthorized(why));
                }
                Err(e) => return Err(e),
            };
            p.require(Permission::ManageMachines)?;
            return Ok(Reporter::Person(p));
        };
        if let Some(err) = refusal(&row, mode) {
            self.record_refusal(id, true, mode, &err.message, peer)
                .await;
            return Err(err);
        }
        if !self.address_ok(&row, peer).await? {
            let err = Error::forbidden("this agent token may not be used from this address");
            self.record_refusal(id, true, mode, &err.message, peer)
                .await;
            return Err(err);
        }
        Ok(Reporter::Agent {
            hash,
            principal: Principal {
                token_id: None,
                name: format!("agent:{mode}"),
                role: plinth_types::Role::Operator,
            },
        })
    }

    /// Records a refused agent token on machine `id`, the one the call names (its token, or with
    /// `token_known` false a secret that is no token of it nor an API token), if that machine
    /// exists: a call may name any id. Best effort: the refusal stands whatever happens here. Capped
    /// like boot events: a machine takes at most three times `boot.loop_max` refusal events
    /// per `boot.loop_window` (a token replayed in a loop, by a broken agent or by whoever
    /// holds it, cannot grow the events table, the event stream and the webhooks by a row per
    /// call); the refusals past the cap are answered the same and logged at debug level.
    async fn record_refusal(
        &self,
        id: Uuid,
        token_known: bool,
        mode: &str,
        why: &str,
        peer: Option<IpAddr>,
    ) {
        const KIND: &str = "agent_token_refused";
        if self.capped.capped(id, KIND) {
            // (the database refused the last one: a flood costs it nothing more for a while)
            tracing::debug!(machine_id = %id, token_known, mode, reason = why, remote = ?peer, "agent token refused (not recorded: past the events' cap, or no such machine)");
            return;
        }
        let settings = &self.boot_env().settings;
        let window_secs = settings.loop_window.as_secs_f64();
        let max = 3 * i64::from(settings.loop_max).max(1);
        let res: Result<bool> = async {
            let mut tx = self.begin().await?;
            if plinth_db::machines::state_of(&mut tx, id)
                .await
                .db()?
                .is_none()
            {
                return Ok(false);
            }
            let recorded = plinth_db::events::insert_capped(
                &mut tx,
                plinth_db::events::NewEvent {
                    actor: "agent",
                    machine_id: Some(id),
                    kind: KIND,
                    from_state: None,
                    to_state: None,
                    details: json!({
                        "reason": why, "mode": mode,
                        "token_machine": token_known.then_some(id), "presented_for": id,
                        "remote": peer.map(ip_text),
                        "events_up_to": max, "window_secs": window_secs,
                    }),
                },
                window_secs,
                max,
            )
            .await
            .db()?;
            tx.commit().await.db()?;
            Ok(recorded)
        }
        .await;
        match res {
            Ok(true) => {
                tracing::warn!(machine_id = %id, token_known, mode, reason = why, remote = ?peer, "agent token refused");
            }
            Ok(false) => {
                self.capped.note(id, KIND);
                tracing::debug!(machine_id = %id, token_known, mode, reason = why, remote = ?peer, "agent token refused (not recorded: past the events' cap, or no such machine)");
            }
            Err(e) => {
                tracing::warn!(machine_id = %id, mode, reason = why, error = %e, "agent token refused; recording the refusal failed");
            }
        }
    }

    /// Uses up the agent's token in `tx`; refused if another report got there first.
    async fn spend(
        &self,
        tx: &mut plinth_db::PgConnection,
        hash: &[u8; 32],
        id: Uuid,
        mode: AgentMode,
    ) -> Result<()> {
        if plinth_db::boot::use_agent_token(tx, id, mode, hash)
            .await
            .db()?
        {
            return Ok(());
        }
        let why = "this agent token was already used";
        self.record_refusal(id, true, mode.as_str(), why, None)
            .await;
        Err(Error::unauthorized(why))
    }

    /// [`App::report_inspection`], before it is counted.
    async fn report_inspection_counted(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
        report: InspectionReport,
    ) -> Result<Machine> {
        match self.reporter(secret, id, AgentMode::Inspect, peer).await? {
            Reporter::Person(p) => self.submit_inspection(&p, id, report).await,
            Reporter::Agent { hash, principal } => {
                validate_report(&report)?;
                let mut tx = self.begin().await?;
                self.spend(&mut tx, &hash, id, AgentMode::Inspect).await?;
                let m = self.inspection_in(&mut tx, &principal, id, report).await?;
                tx.commit().await.db()?;
                tracing::info!(machine_id = %id, "inspection reported by the agent");
                Ok(m)
            }
        }
    }

    /// [`App::report_clean`], before it is counted.
    async fn report_clean_counted(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
        report: CleanReport,
    ) -> Result<Machine> {
        validate_clean(&report)?;
        let (principal, hash) = self
            .reporter(secret, id, AgentMode::Clean, peer)
            .await?
            .into_parts();
        let mut tx = self.begin().await?;
        if let Some(hash) = &hash {
            self.spend(&mut tx, hash, id, AgentMode::Clean).await?;
        }
        let current = plinth_db::machines::get_for_update(&mut tx, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        // What the agent says is checked against what plinth knows: every disk of the facts,
        // wiped as the machine's pool requires. A report that falls short is a failure.
        let required = self.wipe_method_of(&mut tx, &current.pool).await?;
        let shortfall = match report.result {
            CleanResult::Complete => crate::clean::check_clean_report(
                &crate::clean::fact_disks(&current.facts),
                &report.disks,
                required,
            )
            .err(),
            CleanResult::Failed => None,
        };
        if let Some(why) = &shortfall {
            tracing::warn!(machine_id = %id, reason = %why, "a clean report that claims success falls short");
        }
        let reason = match &shortfall {
            Some(why) => Some(why.clone()),
            None => failure_reason(
                report.result,
                &report.reason,
                "the cleaning agent reported a failure",
            ),
        };
        // What the outcome does is the state's: cleaning → ready or clean_failed; a machine
        // being decommissioned is wiped on its way out, so its success completes the
        // decommission (NICs, addresses and rack slot freed; the BMC retired) and its failure
        // is recorded and leaves it decommissioning.
        let state = current.state;
        let mut details = json!({ "disks": report.disks, "method_required": required });
        match report_outcome(state, AgentMode::Clean, reason.is_none()) {
            Some(Outcome::Apply(verb)) => {
                if verb.effects().unrack {
                    details["rack"] = json!(current.rack_name);
                    details["rack_unit"] = json!(current.rack_unit);
                }
                self.apply(
                    &mut tx,
                    &principal,
                    id,
                    verb,
                    None,
                    reason.as_deref(),
                    None,
                    details,
                )
                .await?;
            }
            Some(Outcome::Record(kind)) => {
                details["reason"] = json!(reason);
                crate::record_event_as(&mut tx, &principal.name, Some(id), kind, details).await?;
                tracing::warn!(machine_id = %id, %state, reason = ?reason, "the cleaning failed; the state stays ({kind})");
            }
            // The token was checked for this state's mode: its report has an outcome here.
            None => return Err(crate::missing("report_outcome")()),
        }
        let machine = self.machine_in(&mut tx, id).await?;
        tx.commit().await.db()?;
        tracing::info!(machine_id = %id, result = ?report.result, disks = report.disks.len(), "cleaning reported");
        Ok(machine)
    }
}

fn validate_clean(r: &CleanReport) -> Result<()> {
    let bad = |m: String| Err(Error::invalid("invalid_clean_report", m));
    if r.disks.len() > 256 {
        return bad("at most 256 disks".into());
    }
    for d in &r.disks {
        if d.name.is_empty() || d.name.len() > 64 || d.name.chars().any(|c| c.is_control()) {
            return bad(format!("bad disk name {:?}", d.name));
        }
        if d.zeroed_bytes > d.size_bytes || d.size_bytes > i64::MAX as u64 {
            return bad(format!(
                "disk {}: zeroed_bytes is more than size_bytes",
                d.name
            ));
        }
        if r.result == CleanResult::Complete && d.error.is_some() {
            return bad(format!(
                "disk {} has an error: a clean with errors is `failed`",
                d.name
            ));
        }
    }
    if let Some(reason) = &r.reason
        && (reason.len() > 1024 || reason.chars().any(|c| c.is_control() && c != '\n'))
    {
        return bad("reason: at most 1024 bytes of text".into());
    }
    if r.result == CleanResult::Complete && r.reason.is_some() {
        return bad("reason is for a failed clean".into());
    }
    Ok(())
}

/// A YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The NoCloud `meta-data` of a deployment: its instance id, hostname and SSH keys.
pub fn meta_data(instance_id: Uuid, hostname: &str, keys: &[String]) -> String {
    let mut m = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml_str(&instance_id.to_string()),
        yaml_str(hostname)
    );
    if !keys.is_empty() {
        m.push_str("public-keys:\n");
        for k in keys {
            m.push_str(&format!("  - {}\n", yaml_str(k)));
        }
    }
    m
}

/// A deployment's NoCloud seed, as the agent writes it and the metadata endpoint serves it.
fn seed(d: &plinth_db::deployments::DeploymentRow) -> plinth_types::api::NoCloudSeed {
    let hostname = d
        .hostname
        .clone()
        .unwrap_or_else(|| d.machine_id.to_string());
    plinth_types::api::NoCloudSeed {
        meta_data: meta_data(d.instance_id, &hostname, &d.ssh_authorized_keys),
        user_data: d
            .user_data
            .clone()
            .unwrap_or_else(|| "#cloud-config\n".into()),
        network_config: d.network_config.clone(),
    }
}

fn compression(path: &str) -> plinth_types::api::Compression {
    use plinth_types::api::Compression;
    if path.ends_with(".gz") {
        Compression::Gzip
    } else if path.ends_with(".zst") || path.ends_with(".zstd") {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn human(bytes: u64) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    }
}

impl App {
    /// The deployment of a machine whose state runs the deploy agent, with that state; or why
    /// there is none.
    async fn deploying(
        &self,
        conn: &mut plinth_db::PgConnection,
        id: Uuid,
    ) -> Result<(MachineState, plinth_db::deployments::DeploymentRow)> {
        let (state, _) = plinth_db::machines::state_of(conn, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        if state.behaviour().agent_mode() != Some(AgentMode::Deploy) {
            return Err(Error::conflict(
                "not_deploying",
                format!("the machine is {state}, not deploying"),
            ));
        }
        let d = plinth_db::deployments::get(conn, MachineId(id))
            .await
            .db()?
            .ok_or_else(|| {
                Error::conflict(
                    "no_deployment",
                    format!(
                        "the machine is {state} but has no deployment: deploy it with an image"
                    ),
                )
            })?;
        Ok((state, d))
    }

    /// `GET /machines/{id}/deployment/manifest`: for the deploy agent (its token, mode deploy,
    /// not used up) or an API token allowed to manage machines.
    pub async fn deploy_manifest(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
    ) -> Result<plinth_types::api::DeployManifest> {
        self.reporter(secret, id, AgentMode::Deploy, peer).await?;
        let mut conn = self.conn().await?;
        let (_, d) = self.deploying(&mut conn, id).await?;
        let image = plinth_db::images::get(&mut conn, &d.image_name)
            .await
            .db()?
            .ok_or_else(crate::missing("deploy_manifest"))?;
        Ok(plinth_types::api::DeployManifest {
            url_path: plinth_types::netboot::file_url("", &image.path),
            compression: compression(&image.path),
            image: image.name,
            sha256: image.sha256,
            size: u64::try_from(image.size).unwrap_or(0),
            raw_size: image.raw_size.and_then(|r| u64::try_from(r).ok()),
            raw_sha256: image.raw_sha256,
            root_device: d.root_device.clone(),
            seed: seed(&d),
        })
    }

    /// `POST /machines/{id}/deploy-progress`: shown as the machine's state reason, and as an
    /// event at most every 10 seconds.
    pub async fn deploy_progress(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
        p: plinth_types::api::DeployProgress,
    ) -> Result<()> {
        let who = match self.reporter(secret, id, AgentMode::Deploy, peer).await? {
            Reporter::Agent { principal, .. } | Reporter::Person(principal) => principal,
        };
        let mut tx = self.begin().await?;
        let (state, d) = self.deploying(&mut tx, id).await?;
        let percent = p
            .total_bytes
            .filter(|t| *t > 0)
            .map(|t| (p.bytes_written.min(t) * 100 / t) as u32);
        let reason = format!(
            "writing {} to {}: {}{} at {}/s",
            d.image_name,
            d.root_device,
            percent.map(|p| format!("{p}%, ")).unwrap_or_default(),
            human(p.bytes_written),
            human(p.bytes_per_sec)
        );
        plinth_db::machines::set_state_reason(&mut tx, id, state.as_str(), &reason)
            .await
            .db()?;
        let recent = plinth_db::events::latest(&mut tx, id, 1)
            .await
            .db()?
            .first()
            .is_some_and(|e| {
                e.kind == "deploy_progress" && e.at > Utc::now() - chrono::Duration::seconds(10)
            });
        if !recent {
            crate::record_event_as(
                &mut tx,
                &who.name,
                Some(id),
                "deploy_progress",
                json!({
                    "bytes_written": p.bytes_written, "total_bytes": p.total_bytes,
                    "bytes_per_sec": p.bytes_per_sec, "percent": percent,
                }),
            )
            .await?;
        }
        tx.commit().await.db()?;
        Ok(())
    }

    /// [`App::report_deploy`], before it is counted.
    async fn report_deploy_counted(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
        report: plinth_types::api::DeployReport,
    ) -> Result<Machine> {
        if let Some(r) = &report.reason
            && r.len() > 1024
        {
            return Err(Error::invalid(
                "invalid_reason",
                "a reason has at most 1024 bytes",
            ));
        }
        let (principal, hash) = self
            .reporter(secret, id, AgentMode::Deploy, peer)
            .await?
            .into_parts();
        let mut tx = self.begin().await?;
        let (state, _) = self.deploying(&mut tx, id).await?;
        if let Some(hash) = &hash {
            self.spend(&mut tx, hash, id, AgentMode::Deploy).await?;
        }
        let reason = failure_reason(
            report.result,
            &report.reason,
            "the deploy agent reported a failure",
        );
        let details = json!({ "bytes_written": report.bytes_written, "sha256": report.sha256 });
        match report_outcome(state, AgentMode::Deploy, reason.is_none()) {
            Some(Outcome::Apply(verb)) => {
                self.apply(
                    &mut tx,
                    &principal,
                    id,
                    verb,
                    None,
                    reason.as_deref(),
                    None,
                    details,
                )
                .await?;
            }
            Some(Outcome::Record(kind)) => {
                crate::record_event_as(&mut tx, &principal.name, Some(id), kind, details).await?;
            }
            // The token was checked for this state's mode: its report has an outcome here.
            None => return Err(crate::missing("report_outcome")()),
        }
        let m = self.machine_in(&mut tx, id).await?;
        tx.commit().await.db()?;
        tracing::info!(machine_id = %id, result = ?report.result, "deploy reported");
        Ok(m)
    }
}

impl App {
    /// `GET /metadata/{instance-id}/{meta-data|user-data|network-config}`: the NoCloud seed
    /// over HTTP, for images that prefer a network datasource. The instance id (random, shown
    /// to the deployment's owner) is the key; the data is gone once the machine is released.
    ///
    /// Only the machine itself gets them: a request from an address that is not the machine's
    /// (leased, reserved, or its deploy token's) gets the same 404 as an unknown instance, and
    /// leaves a `metadata_refused` event on the machine.
    pub async fn nocloud(
        &self,
        instance: &str,
        file: &str,
        peer: Option<IpAddr>,
    ) -> Result<String> {
        let gone = || Error::not_found("no such instance, or it was released");
        let instance: Uuid = instance.parse().map_err(|_| gone())?;
        let mut conn = self.conn().await?;
        let d = plinth_db::deployments::by_instance(&mut conn, instance)
            .await
            .db()?
            .ok_or_else(gone)?;
        let remote = peer.map(|p| p.to_canonical());
        let own = plinth_db::deployments::machine_addresses(&mut conn, d.machine_id)
            .await
            .db()?;
        if !remote.is_some_and(|r| own.contains(&r)) {
            // Capped per machine, as the agent token's refusals are (anyone who learnt the
            // instance id can ask again and again), and so is the log line: one per event.
            const KIND: &str = "metadata_refused";
            let machine = d.machine_id.uuid();
            if self.capped.capped(machine, KIND) {
                return Err(gone());
            }
            let settings = &self.boot_env().settings;
            let window_secs = settings.loop_window.as_secs_f64();
            let max = 3 * i64::from(settings.loop_max).max(1);
            let recorded = plinth_db::events::insert_capped(
                &mut conn,
                plinth_db::events::NewEvent {
                    actor: "metadata",
                    machine_id: Some(machine),
                    kind: KIND,
                    from_state: None,
                    to_state: None,
                    details: json!({
                        "remote": remote, "file": file.chars().take(64).collect::<String>(),
                        "events_up_to": max, "window_secs": window_secs,
                    }),
                },
                window_secs,
                max,
            )
            .await
            .db()?;
            if recorded {
                tracing::warn!(machine_id = %d.machine_id, remote = ?remote, file, "metadata asked for from an address that is not the machine's");
            } else {
                self.capped.note(machine, KIND);
            }
            return Err(gone());
        }
        let seed = seed(&d);
        match file {
            "meta-data" => Ok(seed.meta_data),
            "user-data" => Ok(seed.user_data),
            "network-config" => seed
                .network_config
                .ok_or_else(|| Error::not_found("this deployment has no network-config")),
            "vendor-data" => Ok(String::new()),
            other => Err(Error::not_found(format!(
                "no {other:?}: meta-data, user-data, network-config or vendor-data"
            ))),
        }
    }
}

/// The agent's reports, counted for `/metrics` by kind and whether they were taken.
impl App {
    /// `POST /machines/{id}/inspection` with a bearer secret: the agent's token (mode inspect)
    /// or an API token allowed to manage machines.
    pub async fn report_inspection(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
        report: InspectionReport,
    ) -> Result<Machine> {
        let r = self
            .report_inspection_counted(secret, peer, id, report)
            .await;
        self.metrics.agent_report("inspection", r.is_ok());
        r
    }

    /// `POST /machines/{id}/clean`: the cleaning agent's outcome (its token, mode clean, or an
    /// API token allowed to manage machines). `complete` → ready, `failed` → clean_failed.
    pub async fn report_clean(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
        report: CleanReport,
    ) -> Result<Machine> {
        let r = self.report_clean_counted(secret, peer, id, report).await;
        self.metrics.agent_report("clean", r.is_ok());
        r
    }

    /// `POST /machines/{id}/deploy-report`: `complete` → deployed (boot from disk, power
    /// cycle), `failed` → deploy_failed with the reason. Uses up the agent's token.
    pub async fn report_deploy(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        id: Uuid,
        report: plinth_types::api::DeployReport,
    ) -> Result<Machine> {
        let r = self.report_deploy_counted(secret, peer, id, report).await;
        self.metrics.agent_report("deploy", r.is_ok());
        r
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;

    #[test]
    fn meta_data_is_yaml_with_quoted_values() {
        let id = Uuid::nil();
        let m = meta_data(id, "web-01", &["ssh-ed25519 AAAA me@\"x\"".into()]);
        assert_eq!(
            m,
            "instance-id: \"00000000-0000-0000-0000-000000000000\"\nlocal-hostname: \"web-01\"\npublic-keys:\n  - \"ssh-ed25519 AAAA me@\\\"x\\\"\"\n"
        );
        assert_eq!(
            compression("d/x.raw.zst"),
            plinth_types::api::Compression::Zstd
        );
        assert_eq!(
            compression("x.raw.gz"),
            plinth_types::api::Compression::Gzip
        );
        assert_eq!(compression("x.raw"), plinth_types::api::Compression::None);
    }
}
