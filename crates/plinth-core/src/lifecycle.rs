//! Running lifecycle verbs. A verb is one transaction: the guarded UPDATE (allowed states
//! from plinth-types' `TRANSITIONS`, expected version), its event, and what its row of
//! plinth-types' `EFFECTS` says it does: NICs and rack slot, allocation, deployment, and the
//! BMC jobs, inserted in [`App::apply`]'s transaction next to the event, so a transition and its
//! work commit together (DESIGN.md). The reconciler [`App::fail_stuck`] reads the deadlines of
//! the states' `BEHAVIOUR` rows.

use plinth_db::PgConnection;
use plinth_db::machines::TransitionEffects;
use plinth_types::api::{InspectionReport, Machine};
use plinth_types::behaviour::{AgentMode, BEHAVIOUR, Outcome, Since, Timer};
use plinth_types::{Error, MachineState, Verb};
use uuid::Uuid;

use crate::auth::Permission;
use crate::machines::not_found;
use crate::{App, DbResult, Principal, Result, convert, validate};

/// How long a machine may wait in a state that waits on its ramdisk agent (which state uses
/// which is the `deadline` of its row in plinth-types' `BEHAVIOUR`).
/// `[boot]`'s `*_timeout_secs` deserialize into this.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StuckTimeouts {
    #[serde(
        rename = "inspect_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub inspect: std::time::Duration,
    #[serde(
        rename = "clean_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub clean: std::time::Duration,
    /// Deploying without a progress report or a state change this long.
    #[serde(
        rename = "deploy_timeout_secs",
        deserialize_with = "plinth_types::de::secs"
    )]
    pub deploy: std::time::Duration,
}

impl StuckTimeouts {
    pub fn limit(&self, timer: Timer) -> std::time::Duration {
        match timer {
            Timer::Inspect => self.inspect,
            Timer::Clean => self.clean,
            Timer::Deploy => self.deploy,
        }
    }
}

impl Default for StuckTimeouts {
    fn default() -> Self {
        StuckTimeouts {
            inspect: std::time::Duration::from_secs(1800),
            clean: std::time::Duration::from_secs(3600),
            deploy: std::time::Duration::from_secs(3600),
        }
    }
}

/// What the caller asked for: a verb, optionally pinned to a version (If-Match).
#[derive(Debug, Clone)]
pub struct Action {
    pub verb: Verb,
    pub expected_version: Option<i64>,
    pub reason: Option<String>,
}

/// The outcome of one transition.
#[derive(Debug, Clone, Copy)]
pub struct Moved {
    pub from: MachineState,
    pub to: MachineState,
    pub version: i64,
}

impl App {
    /// Applies `verb` to machine `id` inside `tx`, with the effects of its row in `EFFECTS`;
    /// writes the event. `join` is the allocation an `allocate` joins (the one effect that
    /// needs data). On refusal explains why with the machine's current state and version.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn apply(
        &self,
        tx: &mut PgConnection,
        who: &Principal,
        id: Uuid,
        verb: Verb,
        expected_version: Option<i64>,
        reason: Option<&str>,
        join: Option<Uuid>,
        mut details: serde_json::Value,
    ) -> Result<Moved> {
        let does = verb.effects();
        let effects = TransitionEffects {
            set_allocation: join,
            clear_allocation: does.clear_allocation,
            unrack: does.unrack,
        };
        let to = verb.target();
        let moved = plinth_db::machines::transition(
            tx,
            id,
            verb.allowed_from(),
            to,
            expected_version,
            reason,
            who.is_automation(),
            &effects,
        )
        .await
        .db()?;
        let Some((old, version)) = moved else {
            return Err(self.refusal(tx, id, verb, expected_version, who).await);
        };
        if effects.unrack {
            plinth_db::nics::deactivate_for_machine(tx, id).await.db()?;
        }
        // What the allocation's user gave (image choice, user data, keys) ends with it.
        if does.drop_deployment
            && plinth_db::deployments::delete(tx, plinth_types::MachineId(id))
                .await
                .db()?
            && let Some(obj) = details.as_object_mut()
        {
            obj.insert("deployment_deleted".into(), true.into());
        }
        // So does the recording of its console (the tenant's OS printed there).
        if does.drop_deployment {
            plinth_db::console::clear(tx, id).await.db()?;
        }
        // The BMC work of the transition commits with it (DESIGN.md).
        let mut jobs = self.queue_transition_jobs(tx, id, verb, who).await?;
        jobs.extend(self.queue_bios_jobs(tx, id, verb, who).await?);
        if let Some(obj) = details.as_object_mut() {
            if let Some(r) = reason {
                obj.insert("reason".into(), r.into());
            }
            obj.insert("state_version".into(), version.into());
            if !jobs.is_empty() {
                obj.insert("jobs".into(), serde_json::json!(jobs));
            } else if !crate::jobs::transition_jobs(
                verb,
                None,
                plinth_types::api::BootMethod::Network,
            )
            .is_empty()
            {
                obj.insert(
                    "bmc".into(),
                    "none: plinth cannot power this machine; do it by hand".into(),
                );
            }
        }
        plinth_db::events::insert(
            tx,
            plinth_db::events::NewEvent {
                actor: &who.name,
                machine_id: Some(id),
                kind: verb.as_str(),
                from_state: Some(old.as_str()),
                to_state: Some(to.as_str()),
                details,
            },
        )
        .await
        .db()?;
        tracing::info!(machine_id = %id, from = %old, to = %to, %verb, actor = %who.name, "state changed");
        self.metrics.transition(verb.as_str(), to.as_str());
        Ok(Moved {
            from: old,
            to,
            version,
        })
    }

    pub(crate) async fn refusal(
        &self,
        conn: &mut PgConnection,
        id: Uuid,
        verb: Verb,
        expected: Option<i64>,
        who: &Principal,
    ) -> Error {
        let (state, version) = match plinth_db::machines::state_of(conn, id).await {
            Ok(Some(sv)) => sv,
            Ok(None) => return not_found(id),
            Err(e) => return plinth_db::classify(e),
        };
        let err = if expected.is_some_and(|v| v != version) {
            Error::conflict(
                "stale_version",
                format!(
                    "the machine changed: it is at version {version}, not {}",
                    expected.unwrap_or_default()
                ),
            )
        } else if verb.allowed_from().contains(&state) && who.is_automation() {
            Error::conflict(
                "in_maintenance",
                "the machine is in maintenance: automation leaves it alone",
            )
        } else {
            let allowed: Vec<&str> = verb.allowed_from().iter().map(|s| s.as_str()).collect();
            Error::conflict(
                "invalid_transition",
                format!(
                    "cannot {verb} a machine that is {state} (allowed from: {})",
                    allowed.join(", ")
                ),
            )
        };
        err.with_state(state, version)
    }

    /// `POST /machines/{id}/actions/{verb}`.
    pub async fn act(&self, who: &Principal, id: Uuid, action: Action) -> Result<Machine> {
        let verb = action.verb;
        if !verb.is_action() {
            let hint = match verb {
                Verb::Allocate => "machines are allocated with POST /api/v1/allocations",
                _ => "machines are enrolled with POST /api/v1/machines",
            };
            return Err(Error::invalid(
                "not_an_action",
                format!("{verb} is not an action: {hint}"),
            ));
        }
        if verb.is_agent_outcome() {
            return Err(Error::invalid(
                "agent_outcome",
                format!(
                    "{verb} is what the ramdisk agent's report decides ({}); an admin may force it with {{\"force\": true, \"reason\": \"...\"}}",
                    match verb {
                        Verb::InspectComplete => "POST /api/v1/machines/{id}/inspection",
                        Verb::DeployComplete => "POST /api/v1/machines/{id}/deploy-report",
                        _ => "POST /api/v1/machines/{id}/clean",
                    }
                ),
            ));
        }
        self.act_checked(who, id, action).await
    }

    /// An agent outcome without the agent: admins only, with a reason; the event says it was
    /// forced and by whom.
    pub async fn force_outcome(
        &self,
        who: &Principal,
        id: Uuid,
        action: Action,
    ) -> Result<Machine> {
        let verb = action.verb;
        if !verb.is_agent_outcome() {
            return Err(Error::invalid(
                "not_forceable",
                format!("{verb} is an ordinary action: run it without force"),
            ));
        }
        if who.role != plinth_types::Role::Admin {
            return Err(Error::forbidden(format!("only an admin may force {verb}")));
        }
        if action.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(Error::invalid(
                "reason_required",
                format!("forcing {verb} needs a reason; it is recorded"),
            ));
        }
        tracing::warn!(machine_id = %id, %verb, actor = %who.name, reason = ?action.reason, "agent outcome forced");
        self.act_checked(who, id, action).await
    }

    async fn act_checked(&self, who: &Principal, id: Uuid, action: Action) -> Result<Machine> {
        let verb = action.verb;
        validate::reason(action.reason.as_deref())?;
        who.require(Permission::Act(verb))?;
        let mut tx = self.begin().await?;
        let row = self.visible_row(&mut tx, who, id).await?;
        let details = if verb.is_agent_outcome() {
            serde_json::json!({ "rack": row.rack_name, "rack_unit": row.rack_unit, "forced": true })
        } else {
            serde_json::json!({ "rack": row.rack_name, "rack_unit": row.rack_unit })
        };
        self.apply(
            &mut tx,
            who,
            id,
            verb,
            action.expected_version,
            action.reason.as_deref(),
            None,
            details,
        )
        .await?;
        if verb.effects().clear_allocation
            && let Some(alloc) = row.allocation_id
        {
            plinth_db::allocations::close_if_empty(&mut tx, alloc)
                .await
                .db()?;
        }
        let machine = self.machine_in(&mut tx, id).await?;
        tx.commit().await.db()?;
        Ok(crate::machines::as_seen_by(who, machine))
    }

    /// A machine as the API shows it, read in `tx` (after a change, before it commits).
    pub(crate) async fn machine_in(&self, tx: &mut PgConnection, id: Uuid) -> Result<Machine> {
        let row = plinth_db::machines::get(tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("machine_in"))?;
        convert::machine(tx, row).await
    }

    /// Maintenance on or off: orthogonal to the state; bumps the version and is recorded.
    pub async fn set_maintenance(
        &self,
        who: &Principal,
        id: Uuid,
        on: bool,
        reason: Option<String>,
        expected_version: Option<i64>,
    ) -> Result<Machine> {
        who.require(Permission::ManageMachines)?;
        validate::reason(reason.as_deref())?;
        let mut tx = self.begin().await?;
        let row = plinth_db::machines::get_for_update(&mut tx, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        let state = row.state;
        if state == MachineState::Decommissioned {
            return Err(Error::conflict(
                "decommissioned",
                "a decommissioned machine cannot change",
            )
            .with_state(state, row.state_version));
        }
        let version = plinth_db::machines::set_maintenance(
            &mut tx,
            id,
            on,
            reason.as_deref(),
            expected_version,
        )
        .await
        .db()?
        .ok_or_else(|| {
            Error::conflict(
                "stale_version",
                format!(
                    "the machine changed: it is at version {}",
                    row.state_version
                ),
            )
            .with_state(state, row.state_version)
        })?;
        plinth_db::events::insert(
            &mut tx,
            plinth_db::events::NewEvent {
                actor: &who.name,
                machine_id: Some(id),
                kind: if on {
                    "maintenance_on"
                } else {
                    "maintenance_off"
                },
                from_state: None,
                to_state: None,
                details: serde_json::json!({ "reason": reason, "state_version": version }),
            },
        )
        .await
        .db()?;
        let row = plinth_db::machines::get(&mut tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("set_maintenance"))?;
        let machine = convert::machine(&mut tx, row).await?;
        tx.commit().await.db()?;
        tracing::info!(machine_id = %id, maintenance = on, actor = %who.name, "maintenance changed");
        Ok(machine)
    }

    /// `POST /machines/{id}/inspection`: stores the facts and moves inspecting → ready.
    pub async fn submit_inspection(
        &self,
        who: &Principal,
        id: Uuid,
        report: InspectionReport,
    ) -> Result<Machine> {
        who.require(Permission::ManageMachines)?;
        validate_report(&report)?;
        let mut tx = self.begin().await?;
        let machine = self.inspection_in(&mut tx, who, id, report).await?;
        tx.commit().await.db()?;
        Ok(machine)
    }

    /// Stores an inspection report in `tx` (validated by the caller): inspecting → ready.
    pub(crate) async fn inspection_in(
        &self,
        tx: &mut PgConnection,
        who: &Principal,
        id: Uuid,
        report: InspectionReport,
    ) -> Result<Machine> {
        let facts = serde_json::to_value(&report).map_err(crate::internal("inspection_in"))?;
        let summary = serde_json::json!({
            "cpu_threads": report.cpu.threads, "memory_mib": report.memory_mib,
            "disks": report.disks.len(), "serial": report.system.serial,
        });
        // What the report does is the state's: inspecting → ready; a discovered machine
        // (unknown, booted under the discovery policy) keeps its state, its facts waiting with
        // it for a technician to adopt it.
        let current = plinth_db::machines::get_for_update(tx, id)
            .await
            .db()?
            .ok_or_else(|| not_found(id))?;
        let state = current.state;
        match report_outcome(state, AgentMode::Inspect, true) {
            Some(Outcome::Record(kind)) => {
                plinth_db::machines::set_facts(tx, id, &facts, report.arch.as_str())
                    .await
                    .db()?;
                crate::record_event_as(tx, &who.name, Some(id), kind, summary).await?;
                tracing::info!(machine_id = %id, %state, "facts stored; the state stays");
            }
            Some(Outcome::Apply(verb)) => {
                self.apply(tx, who, id, verb, None, None, None, summary)
                    .await?;
                plinth_db::machines::set_facts(tx, id, &facts, report.arch.as_str())
                    .await
                    .db()?;
                // The firmware inventory, read from the BMC by a job after this commits.
                crate::firmware::queue_inventory_read(tx, id, &who.name).await?;
            }
            None => return Err(crate::missing("report_outcome")()),
        }
        let row = plinth_db::machines::get(tx, id)
            .await
            .db()?
            .ok_or_else(crate::missing("inspection_in"))?;
        convert::machine(tx, row).await
    }
}

/// What a report of an agent in `mode` does for a machine in `state`, as the agent succeeded
/// or not (`None`: this mode reports no failure): the outcome in the state's `BEHAVIOUR` row.
/// In a state where no such agent reports, the outcome of the state whose ramdisk runs that
/// mode: the transition's guard then refuses the report as any refused verb is refused
/// (`invalid_transition`, with the current state).
pub(crate) fn report_outcome(
    state: MachineState,
    mode: AgentMode,
    succeeded: bool,
) -> Option<Outcome> {
    let report = state.behaviour().report_in(mode).or_else(|| {
        BEHAVIOUR
            .iter()
            .find(|b| b.netboot == plinth_types::behaviour::NetBoot::Ramdisk(mode))
            .and_then(|b| b.report)
    })?;
    if succeeded {
        Some(report.complete)
    } else {
        report.failed
    }
}

impl App {
    /// A reconciler pass: machines in a state with a deadline (see `BEHAVIOUR`) for longer than
    /// allowed get the state's verb on timeout, with the reason. Safe on every instance at once
    /// (each move is pinned to the version seen).
    pub async fn fail_stuck(&self, t: &StuckTimeouts) -> Result<usize> {
        let mut failed = 0;
        for (state, deadline) in BEHAVIOUR
            .iter()
            .filter_map(|b| b.deadline.map(|d| (b.state, d)))
        {
            let (verb, limit, what) = (
                deadline.on_timeout,
                t.limit(deadline.timer),
                deadline.awaiting,
            );
            let stuck = {
                let mut conn = self.conn().await?;
                match deadline.since {
                    // Written for deploying (plinth-types' tests keep it the only such state).
                    Since::Progress => {
                        plinth_db::machines::stuck_deploying(&mut conn, limit.as_secs_f64(), 100)
                            .await
                            .db()?
                    }
                    Since::StateChange => plinth_db::machines::stuck(
                        &mut conn,
                        state.as_str(),
                        limit.as_secs_f64(),
                        100,
                    )
                    .await
                    .db()?,
                }
            };
            for (id, version) in stuck {
                let mut reason = format!(
                    "no {what} report within {} s: did the machine boot the ramdisk? (its events and console tell)",
                    limit.as_secs()
                );
                // Where its boot stopped (issue 22).
                let seen = self.last_seen(id).await?;
                if let Some(s) = &seen {
                    reason.push_str("; ");
                    reason.push_str(&s.text());
                }
                crate::console::quote_last_lines(self, id, &mut reason).await;
                let mut tx = self.begin().await?;
                let res = self
                    .apply(
                        &mut tx,
                        &Principal::system(),
                        id,
                        verb,
                        Some(version),
                        Some(&reason),
                        None,
                        serde_json::json!({
                            "timeout_secs": limit.as_secs(),
                            "last_seen": seen.as_ref().map(crate::sightings::LastSeen::details),
                        }),
                    )
                    .await;
                match res {
                    Ok(_) => {
                        tx.commit().await.db()?;
                        failed += 1;
                        tracing::warn!(machine_id = %id, %state, "{reason}");
                    }
                    // It moved meanwhile (a report arrived, another instance got there).
                    Err(e) if e.kind == plinth_types::ErrorKind::Conflict => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(failed)
    }
}

pub(crate) fn validate_report(r: &InspectionReport) -> Result<()> {
    let bad = |m: &str| Err(Error::invalid("invalid_inspection", m.to_owned()));
    if r.cpu.cores == 0 || r.cpu.threads < r.cpu.cores {
        return bad("cpu.cores must be at least 1 and cpu.threads at least cpu.cores");
    }
    if r.memory_mib == 0 {
        return bad("memory_mib must be positive");
    }
    if r.disks.iter().any(|d| d.size_bytes > i64::MAX as u64) || r.memory_mib > i64::MAX as u64 {
        return bad("sizes must fit in a signed 64-bit integer");
    }
    if r.system.serial.len() > 256 || r.cpu.model.len() > 256 {
        return bad("text fields are at most 256 bytes");
    }
    Ok(())
}
