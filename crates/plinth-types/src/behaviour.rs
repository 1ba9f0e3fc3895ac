//! What the lifecycle *does*, as data next to [`TRANSITIONS`]: [`EFFECTS`] says what each
//! transition does besides changing the state, [`BEHAVIOUR`] what each state means to the parts
//! of plinth that act on machines.
//!
//! Why tables: a state or a verb used to be spread over `match`es in the DHCP decision, the
//! iPXE script, the reconcilers, the BMC job list and the agent's reports, so adding one meant
//! finding all of them. Now those places read these rows, and the tests at the bottom check
//! the rows against a second, hand-written copy and against [`TRANSITIONS`] (a report's verb
//! must be allowed from its state, a state the BMC boots into must boot the ramdisk, ...).
//!
//! Pure data: plinth-core turns a row into job rows, SQL guards and scripts.
//!
//! [`TRANSITIONS`]: crate::lifecycle::TRANSITIONS

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lifecycle::{MachineState, Verb};

/// The mode the ramdisk's agent runs in: the boot script writes it on the kernel command line
/// (`plinth.mode=`), the agent token is minted for it, and a report is accepted only with a
/// token of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    Inspect,
    Clean,
    Deploy,
}

impl AgentMode {
    pub const ALL: [AgentMode; 3] = [AgentMode::Inspect, AgentMode::Clean, AgentMode::Deploy];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Inspect => "inspect",
            AgentMode::Clean => "clean",
            AgentMode::Deploy => "deploy",
        }
    }
}

impl fmt::Display for AgentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = AgentMode::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown agent mode {s:?} (want {})", all.join(", "))
            })
    }
}

/// One BMC action a transition queues. plinth-core turns each into a job, in the machine's
/// firmware mode when it is known; the steps of one transition share a chain, so a failed
/// step cancels the ones after it rather than booting the machine from the wrong device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BmcStep {
    /// Boot from the network at the next boot only: the ramdisk of the state to come, and
    /// afterwards whatever the machine booted before.
    NetbootOnce,
    /// Boot from the local disk from now on (a deployed image).
    DiskForGood,
    /// Power cycle, or power on when off: the boot device just set takes effect.
    PowerCycle,
    /// Power off at once: the ramdisk has done its work and holds nothing.
    PowerOff,
    /// Power off for good, then forget the BMC's credentials (a machine leaving).
    Retire,
}

/// What one verb does besides moving the state ([`crate::lifecycle::Transition`]).
///
/// Not a column because it is true of every row: the agent tokens of the machine are revoked
/// by the SQL trigger `machines_state_revokes_agent_tokens` on every state change (a ramdisk of
/// an earlier state cannot report into a later one), and every transition changes the state
/// (a test checks that); see [`Effects::revokes_agent_tokens`].
#[derive(Debug, Clone, Copy)]
pub struct Effects {
    pub verb: Verb,
    /// BMC jobs queued in the transition's transaction, in order. Nothing is queued for a
    /// machine without a BMC (its event says a person has to do it).
    pub bmc: &'static [BmcStep],
    /// Free the rack slot and deactivate the NICs (their MACs and reserved addresses may be
    /// enrolled again).
    pub unrack: bool,
    /// Leave the allocation (which is closed once it is empty).
    pub clear_allocation: bool,
    /// Delete the deployment: what the allocation's user gave (image choice, user data, keys)
    /// ends with the allocation.
    pub drop_deployment: bool,
}

impl Effects {
    /// Every transition revokes the machine's live agent tokens (done in SQL, see above).
    pub fn revokes_agent_tokens(&self) -> bool {
        !self.verb.allowed_from().contains(&self.verb.target())
    }
}

use BmcStep as B;
use MachineState as S;
use Verb as V;

/// Into a ramdisk state: boot it once, and (re)start the machine.
const TO_RAMDISK: &[BmcStep] = &[B::NetbootOnce, B::PowerCycle];

/// What each verb does. One row per verb (checked by a test).
#[rustfmt::skip]
pub const EFFECTS: &[Effects] = &[
    Effects { verb: V::Enroll, bmc: &[], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::Discover, bmc: &[], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::Adopt, bmc: &[], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::Inspect, bmc: TO_RAMDISK, unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::InspectComplete, bmc: &[B::PowerOff], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::InspectFail, bmc: &[], unrack: false, clear_allocation: false, drop_deployment: false },
    // Joining an allocation needs its id: the caller gives it (plinth-core `App::apply`).
    Effects { verb: V::Allocate, bmc: &[], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::Deploy, bmc: TO_RAMDISK, unrack: false, clear_allocation: false, drop_deployment: false },
    // The image is written: boot it from its disk, for good.
    Effects { verb: V::DeployComplete, bmc: &[B::DiskForGood, B::PowerCycle], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::DeployFail, bmc: &[], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::Release, bmc: TO_RAMDISK, unrack: false, clear_allocation: true, drop_deployment: true },
    Effects { verb: V::Clean, bmc: TO_RAMDISK, unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::CleanComplete, bmc: &[B::PowerOff], unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::CleanFail, bmc: &[], unrack: false, clear_allocation: false, drop_deployment: false },
    // Wiped before it leaves: the clean ramdisk.
    Effects { verb: V::Decommission, bmc: TO_RAMDISK, unrack: false, clear_allocation: false, drop_deployment: false },
    Effects { verb: V::DecommissionComplete, bmc: &[B::Retire], unrack: true, clear_allocation: false, drop_deployment: false },
];

impl Verb {
    /// The row of [`EFFECTS`] for this verb.
    pub fn effects(self) -> &'static Effects {
        EFFECTS
            .iter()
            .find(|e| e.verb == self)
            .expect("every verb has exactly one row in EFFECTS (checked by a test)")
    }
}

/// What a network boot gets in a state: the DHCP server hands a boot file only for the two
/// ramdisk kinds; the iPXE script renders each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetBoot {
    /// The plinth ramdisk, its agent in this mode.
    Ramdisk(AgentMode),
    /// A machine plinth found by itself: the inspection ramdisk when the unknown-machines
    /// policy boots them, else nothing until a technician adopts it.
    Discovery,
    /// plinth has nothing for it to do: the configured idle boot (local disk or power off).
    Idle,
    /// Its own disk, whatever the idle setting: a deployed OS.
    LocalDisk,
    /// Nothing: the script says why and waits, then hands back to the firmware.
    Nothing(&'static str),
}

/// Which of plinth-core's `StuckTimeouts` (`[boot]` settings) bounds a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Inspect,
    Clean,
    Deploy,
}

/// From when a deadline counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The state change.
    StateChange,
    /// The last sign of life: the state change or a progress report (writing a large image
    /// takes long, and says how far it got). `plinth_db::machines::stuck_deploying` is written
    /// for `deploying` only (a test keeps it so).
    Progress,
}

/// How long plinth waits in a state for its ramdisk agent, and what a reconciler does then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub timer: Timer,
    pub since: Since,
    /// Applied by the reconciler, with the reason, when the time is up.
    pub on_timeout: Verb,
    /// What did not arrive, for that reason ("no {awaiting} report within ...").
    pub awaiting: &'static str,
}

/// What one outcome of an agent's report does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Apply this verb.
    Apply(Verb),
    /// Leave the state; record an event of this kind.
    Record(&'static str),
}

/// What the final report of the agent (in the state's [`StateBehaviour::agent_mode`]) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentReport {
    pub complete: Outcome,
    /// `None`: the agent reports no failure in this mode (the deadline covers it).
    pub failed: Option<Outcome>,
}

/// What one state means.
#[derive(Debug, Clone, Copy)]
pub struct StateBehaviour {
    pub state: MachineState,
    pub netboot: NetBoot,
    /// The machine belongs to an allocation (the database checks the same).
    pub allocated: bool,
    pub deadline: Option<Deadline>,
    /// `None`: no agent runs in this state, and a report is refused by the transition's guard.
    pub report: Option<AgentReport>,
}

impl StateBehaviour {
    /// The mode of the ramdisk this state boots (discovery inspects), if any.
    pub fn agent_mode(&self) -> Option<AgentMode> {
        match self.netboot {
            NetBoot::Ramdisk(m) => Some(m),
            NetBoot::Discovery => Some(AgentMode::Inspect),
            NetBoot::Idle | NetBoot::LocalDisk | NetBoot::Nothing(_) => None,
        }
    }

    /// What the agent's final report does here, for a report of `mode`: `None` when no agent
    /// of that mode reports in this state.
    pub fn report_in(&self, mode: AgentMode) -> Option<AgentReport> {
        self.report.filter(|_| self.agent_mode() == Some(mode))
    }
}

const fn deadline(
    timer: Timer,
    since: Since,
    on_timeout: Verb,
    awaiting: &'static str,
) -> Option<Deadline> {
    Some(Deadline {
        timer,
        since,
        on_timeout,
        awaiting,
    })
}

const fn report(complete: Outcome, failed: Option<Outcome>) -> Option<AgentReport> {
    Some(AgentReport { complete, failed })
}

use NetBoot as N;
use Outcome::{Apply, Record};

/// What each state means. One row per state (checked by a test).
#[rustfmt::skip]
pub const BEHAVIOUR: &[StateBehaviour] = &[
    // Its facts wait with it for a technician to adopt it.
    StateBehaviour { state: S::Discovered, netboot: N::Discovery, allocated: false, deadline: None,
        report: report(Record("discovered_inspected"), None) },
    StateBehaviour { state: S::Enrolled, netboot: N::Nothing("this machine is enrolled but not asked to inspect"),
        allocated: false, deadline: None, report: None },
    StateBehaviour { state: S::Inspecting, netboot: N::Ramdisk(AgentMode::Inspect), allocated: false,
        deadline: deadline(Timer::Inspect, Since::StateChange, V::InspectFail, "inspection"),
        report: report(Apply(V::InspectComplete), None) },
    StateBehaviour { state: S::InspectFailed, netboot: N::Nothing("inspection failed; an operator has to look at it"),
        allocated: false, deadline: None, report: None },
    StateBehaviour { state: S::Ready, netboot: N::Idle, allocated: false, deadline: None, report: None },
    StateBehaviour { state: S::Allocated, netboot: N::Idle, allocated: true, deadline: None, report: None },
    StateBehaviour { state: S::Deploying, netboot: N::Ramdisk(AgentMode::Deploy), allocated: true,
        deadline: deadline(Timer::Deploy, Since::Progress, V::DeployFail, "deploy progress"),
        report: report(Apply(V::DeployComplete), Some(Apply(V::DeployFail))) },
    StateBehaviour { state: S::Deployed, netboot: N::LocalDisk, allocated: true, deadline: None, report: None },
    StateBehaviour { state: S::DeployFailed, netboot: N::Nothing("deployment failed; an operator has to look at it"),
        allocated: true, deadline: None, report: None },
    StateBehaviour { state: S::Cleaning, netboot: N::Ramdisk(AgentMode::Clean), allocated: false,
        deadline: deadline(Timer::Clean, Since::StateChange, V::CleanFail, "cleaning"),
        report: report(Apply(V::CleanComplete), Some(Apply(V::CleanFail))) },
    StateBehaviour { state: S::CleanFailed, netboot: N::Nothing("cleaning failed; an operator has to look at it"),
        allocated: false, deadline: None, report: None },
    // Wiped on its way out. No deadline: there is no verb for a decommission that failed, and
    // a failed wipe leaves it here (recorded) for a person to look at.
    StateBehaviour { state: S::Decommissioning, netboot: N::Ramdisk(AgentMode::Clean), allocated: false, deadline: None,
        report: report(Apply(V::DecommissionComplete), Some(Record("decommission_clean_failed"))) },
    StateBehaviour { state: S::Decommissioned, netboot: N::Nothing("this machine is decommissioned; plinth boots nothing"),
        allocated: false, deadline: None, report: None },
];

impl MachineState {
    /// The row of [`BEHAVIOUR`] for this state.
    pub fn behaviour(self) -> &'static StateBehaviour {
        BEHAVIOUR
            .iter()
            .find(|b| b.state == self)
            .expect("every state has exactly one row in BEHAVIOUR (checked by a test)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::next_state;

    /// Written by hand from docs/lifecycle.md ("What each transition writes", "BMC work of a
    /// transition"), independently of [`EFFECTS`]: (verb, BMC steps, unrack, clear allocation,
    /// drop deployment). Verbs not listed do nothing but move the state.
    const EXPECTED_EFFECTS: &[(&str, &str, bool, bool, bool)] = &[
        ("inspect", "netboot_once power_cycle", false, false, false),
        ("inspect_complete", "power_off", false, false, false),
        ("deploy", "netboot_once power_cycle", false, false, false),
        (
            "deploy_complete",
            "disk_for_good power_cycle",
            false,
            false,
            false,
        ),
        ("release", "netboot_once power_cycle", false, true, true),
        ("clean", "netboot_once power_cycle", false, false, false),
        ("clean_complete", "power_off", false, false, false),
        (
            "decommission",
            "netboot_once power_cycle",
            false,
            false,
            false,
        ),
        ("decommission_complete", "retire", true, false, false),
    ];

    fn step_name(s: BmcStep) -> &'static str {
        match s {
            B::NetbootOnce => "netboot_once",
            B::DiskForGood => "disk_for_good",
            B::PowerCycle => "power_cycle",
            B::PowerOff => "power_off",
            B::Retire => "retire",
        }
    }

    fn effects_as_text(verb: Verb) -> (String, bool, bool, bool) {
        let e = verb.effects();
        let steps: Vec<&str> = e.bmc.iter().map(|s| step_name(*s)).collect();
        (
            steps.join(" "),
            e.unrack,
            e.clear_allocation,
            e.drop_deployment,
        )
    }

    fn expected_effects(verb: Verb) -> (String, bool, bool, bool) {
        EXPECTED_EFFECTS
            .iter()
            .find(|(v, ..)| *v == verb.as_str())
            .map(|(_, s, u, c, d)| ((*s).to_owned(), *u, *c, *d))
            .unwrap_or_default()
    }

    /// The exhaustive walk of `lifecycle::tests`, extended to what each allowed move does.
    #[test]
    fn every_allowed_move_has_the_hand_written_effects() {
        let mut seen = std::collections::HashSet::new();
        for state in MachineState::ALL {
            for verb in Verb::ALL {
                if next_state(state, verb).is_none() {
                    continue;
                }
                seen.insert(verb);
                assert_eq!(
                    effects_as_text(verb),
                    expected_effects(verb),
                    "{state} --{verb}-->"
                );
                assert!(verb.effects().revokes_agent_tokens(), "{state} --{verb}-->");
            }
        }
        // The creation verbs have no (state, verb) pair: they start from nothing.
        for verb in Verb::ALL.into_iter().filter(|v| !seen.contains(v)) {
            assert!(verb.allowed_from().is_empty(), "{verb}");
            assert_eq!(effects_as_text(verb), expected_effects(verb), "{verb}");
        }
        for (v, ..) in EXPECTED_EFFECTS {
            assert!(v.parse::<Verb>().is_ok(), "{v}");
        }
    }

    #[test]
    fn each_verb_has_exactly_one_effects_row() {
        for verb in Verb::ALL {
            assert_eq!(
                EFFECTS.iter().filter(|e| e.verb == verb).count(),
                1,
                "{verb}"
            );
        }
        assert_eq!(EFFECTS.len(), Verb::ALL.len());
    }

    #[test]
    fn each_state_has_exactly_one_behaviour_row() {
        for state in MachineState::ALL {
            assert_eq!(
                BEHAVIOUR.iter().filter(|b| b.state == state).count(),
                1,
                "{state}"
            );
        }
        assert_eq!(BEHAVIOUR.len(), MachineState::ALL.len());
    }

    /// Written by hand from docs/lifecycle.md and docs/boot.md, independently of
    /// [`BEHAVIOUR`]: (state, network boot, in an allocation, deadline as "timer since verb",
    /// report as "complete / failed").
    const EXPECTED_BEHAVIOUR: &[(&str, &str, bool, &str, &str)] = &[
        (
            "discovered",
            "discovery",
            false,
            "",
            "record discovered_inspected / -",
        ),
        ("enrolled", "nothing", false, "", ""),
        (
            "inspecting",
            "ramdisk inspect",
            false,
            "inspect state_change inspect_fail",
            "inspect_complete / -",
        ),
        ("inspect_failed", "nothing", false, "", ""),
        ("ready", "idle", false, "", ""),
        ("allocated", "idle", true, "", ""),
        (
            "deploying",
            "ramdisk deploy",
            true,
            "deploy progress deploy_fail",
            "deploy_complete / deploy_fail",
        ),
        ("deployed", "local_disk", true, "", ""),
        ("deploy_failed", "nothing", true, "", ""),
        (
            "cleaning",
            "ramdisk clean",
            false,
            "clean state_change clean_fail",
            "clean_complete / clean_fail",
        ),
        ("clean_failed", "nothing", false, "", ""),
        (
            "decommissioning",
            "ramdisk clean",
            false,
            "",
            "decommission_complete / record decommission_clean_failed",
        ),
        ("decommissioned", "nothing", false, "", ""),
    ];

    fn behaviour_as_text(state: MachineState) -> (String, bool, String, String) {
        let b = state.behaviour();
        let netboot = match b.netboot {
            N::Ramdisk(m) => format!("ramdisk {m}"),
            N::Discovery => "discovery".into(),
            N::Idle => "idle".into(),
            N::LocalDisk => "local_disk".into(),
            N::Nothing(why) => {
                assert!(
                    !why.is_empty(),
                    "{state}: a state that boots nothing says why"
                );
                "nothing".into()
            }
        };
        let deadline = b.deadline.map_or(String::new(), |d| {
            let timer = match d.timer {
                Timer::Inspect => "inspect",
                Timer::Clean => "clean",
                Timer::Deploy => "deploy",
            };
            let since = match d.since {
                Since::StateChange => "state_change",
                Since::Progress => "progress",
            };
            format!("{timer} {since} {}", d.on_timeout)
        });
        let outcome = |o: Option<Outcome>| match o {
            None => "-".to_owned(),
            Some(Apply(v)) => v.to_string(),
            Some(Record(kind)) => format!("record {kind}"),
        };
        let report = b.report.map_or(String::new(), |r| {
            format!("{} / {}", outcome(Some(r.complete)), outcome(r.failed))
        });
        (netboot, b.allocated, deadline, report)
    }

    #[test]
    fn every_state_behaves_as_written_by_hand() {
        for state in MachineState::ALL {
            let (_, netboot, allocated, deadline, report) = EXPECTED_BEHAVIOUR
                .iter()
                .find(|(s, ..)| *s == state.as_str())
                .unwrap_or_else(|| panic!("{state} is not in EXPECTED_BEHAVIOUR"));
            assert_eq!(
                behaviour_as_text(state),
                (
                    (*netboot).to_owned(),
                    *allocated,
                    (*deadline).to_owned(),
                    (*report).to_owned()
                ),
                "{state}"
            );
        }
        assert_eq!(EXPECTED_BEHAVIOUR.len(), MachineState::ALL.len());
    }

    /// The two tables and [`TRANSITIONS`](crate::lifecycle::TRANSITIONS) agree with each other.
    #[test]
    fn the_tables_agree_with_the_transitions() {
        for b in BEHAVIOUR {
            let s = b.state;
            // A deadline's verb, and a report's, can be taken from the state they are for.
            if let Some(d) = b.deadline {
                assert!(
                    next_state(s, d.on_timeout).is_some(),
                    "{s}: {}",
                    d.on_timeout
                );
                assert!(
                    b.agent_mode().is_some(),
                    "{s}: a deadline waits on an agent"
                );
                // plinth_db::machines::stuck_deploying counts progress of deploying only.
                if d.since == Since::Progress {
                    assert_eq!(s, S::Deploying);
                }
            }
            // An agent reports exactly where a ramdisk boots.
            assert_eq!(b.report.is_some(), b.agent_mode().is_some(), "{s}");
            if let Some(r) = b.report {
                // Success is what only the agent proves (see `Verb::is_agent_outcome`).
                if let Apply(v) = r.complete {
                    assert!(v.is_agent_outcome(), "{s}: {v}");
                }
                for o in [Some(r.complete), r.failed].into_iter().flatten() {
                    if let Apply(v) = o {
                        assert!(next_state(s, v).is_some(), "{s}: {v}");
                    }
                }
            }
        }
        // A verb that moves a machine into a ramdisk state boots that ramdisk (a machine with
        // a BMC), and one that leaves a ramdisk for good powers off, boots its disk or retires.
        for t in crate::lifecycle::TRANSITIONS
            .iter()
            .filter(|t| !t.from.is_empty())
        {
            let into = t.to.behaviour();
            if matches!(into.netboot, N::Ramdisk(_)) {
                assert_eq!(t.verb.effects().bmc, TO_RAMDISK, "{}", t.verb);
            }
            if t.verb.is_agent_outcome() {
                let steps = t.verb.effects().bmc;
                assert!(
                    matches!(
                        steps.first(),
                        Some(B::PowerOff | B::DiskForGood | B::Retire)
                    ),
                    "{}: {steps:?}",
                    t.verb
                );
            }
        }
    }

    #[test]
    fn agent_modes_round_trip() {
        for m in AgentMode::ALL {
            assert_eq!(m.as_str().parse::<AgentMode>(), Ok(m));
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        let e = "launch".parse::<AgentMode>().unwrap_err();
        assert!(e.contains("inspect, clean, deploy"), "{e}");
    }
}
