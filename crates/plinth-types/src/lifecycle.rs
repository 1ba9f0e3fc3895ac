//! The machine lifecycle as data: states, verbs and the one table of allowed transitions.
//! What a transition does and what a state means are the tables next to it, in
//! [`crate::behaviour`].
//!
//! plinth-db enforces this table in SQL (`UPDATE ... WHERE state = ANY($from) AND
//! state_version = $v`), so two plinth instances can never move one machine twice.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a machine is in its life, from the day it is racked to its decommission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Discovered,
    Enrolled,
    Inspecting,
    InspectFailed,
    Ready,
    Allocated,
    Deploying,
    Deployed,
    DeployFailed,
    Cleaning,
    CleanFailed,
    Decommissioning,
    Decommissioned,
}

use MachineState as S;

impl MachineState {
    pub const ALL: [MachineState; 13] = [
        S::Discovered,
        S::Enrolled,
        S::Inspecting,
        S::InspectFailed,
        S::Ready,
        S::Allocated,
        S::Deploying,
        S::Deployed,
        S::DeployFailed,
        S::Cleaning,
        S::CleanFailed,
        S::Decommissioning,
        S::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            S::Discovered => "discovered",
            S::Enrolled => "enrolled",
            S::Inspecting => "inspecting",
            S::InspectFailed => "inspect_failed",
            S::Ready => "ready",
            S::Allocated => "allocated",
            S::Deploying => "deploying",
            S::Deployed => "deployed",
            S::DeployFailed => "deploy_failed",
            S::Cleaning => "cleaning",
            S::CleanFailed => "clean_failed",
            S::Decommissioning => "decommissioning",
            S::Decommissioned => "decommissioned",
        }
    }

    /// States in which a machine belongs to an allocation (a column of
    /// [`BEHAVIOUR`](crate::behaviour::BEHAVIOUR)).
    pub fn is_allocated(self) -> bool {
        self.behaviour().allocated
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown machine state {s:?}"))
    }
}

/// A lifecycle verb: something that moves a machine from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// `POST /machines`: a technician enrolls a machine.
    Enroll,
    /// DHCP saw an unknown MAC (issue 3).
    Discover,
    Adopt,
    Inspect,
    /// The inspection report arrived (`POST /machines/{id}/inspection`).
    InspectComplete,
    InspectFail,
    /// `POST /allocations`.
    Allocate,
    Deploy,
    DeployComplete,
    DeployFail,
    Release,
    /// Clean a machine whose cleaning failed again (a disk replaced, a cable fixed).
    Clean,
    CleanComplete,
    CleanFail,
    Decommission,
    DecommissionComplete,
}

use Verb as V;

/// One row of the lifecycle: `verb` moves a machine from any of `from` to `to`.
/// An empty `from` means the verb creates the machine.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub verb: Verb,
    pub from: &'static [MachineState],
    pub to: MachineState,
}

/// The lifecycle. This is the only place the allowed transitions are written down.
#[rustfmt::skip]
pub const TRANSITIONS: &[Transition] = &[
    Transition { verb: V::Enroll, from: &[], to: S::Enrolled },
    Transition { verb: V::Discover, from: &[], to: S::Discovered },
    Transition { verb: V::Adopt, from: &[S::Discovered], to: S::Enrolled },
    Transition { verb: V::Inspect, from: &[S::Enrolled, S::Ready, S::InspectFailed], to: S::Inspecting },
    Transition { verb: V::InspectComplete, from: &[S::Inspecting], to: S::Ready },
    Transition { verb: V::InspectFail, from: &[S::Inspecting], to: S::InspectFailed },
    Transition { verb: V::Allocate, from: &[S::Ready], to: S::Allocated },
    Transition { verb: V::Deploy, from: &[S::Allocated], to: S::Deploying },
    Transition { verb: V::DeployComplete, from: &[S::Deploying], to: S::Deployed },
    Transition { verb: V::DeployFail, from: &[S::Deploying], to: S::DeployFailed },
    Transition { verb: V::Release, from: &[S::Allocated, S::Deployed, S::DeployFailed], to: S::Cleaning },
    Transition { verb: V::Clean, from: &[S::CleanFailed], to: S::Cleaning },
    Transition { verb: V::CleanComplete, from: &[S::Cleaning], to: S::Ready },
    Transition { verb: V::CleanFail, from: &[S::Cleaning], to: S::CleanFailed },
    Transition {
        verb: V::Decommission,
        from: &[S::Enrolled, S::Discovered, S::Ready, S::InspectFailed, S::CleanFailed],
        to: S::Decommissioning,
    },
    Transition { verb: V::DecommissionComplete, from: &[S::Decommissioning], to: S::Decommissioned },
];

impl Verb {
    pub const ALL: [Verb; 16] = [
        V::Enroll,
        V::Discover,
        V::Adopt,
        V::Inspect,
        V::InspectComplete,
        V::InspectFail,
        V::Allocate,
        V::Deploy,
        V::DeployComplete,
        V::DeployFail,
        V::Release,
        V::Clean,
        V::CleanComplete,
        V::CleanFail,
        V::Decommission,
        V::DecommissionComplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            V::Enroll => "enroll",
            V::Discover => "discover",
            V::Adopt => "adopt",
            V::Inspect => "inspect",
            V::InspectComplete => "inspect_complete",
            V::InspectFail => "inspect_fail",
            V::Allocate => "allocate",
            V::Deploy => "deploy",
            V::DeployComplete => "deploy_complete",
            V::DeployFail => "deploy_fail",
            V::Release => "release",
            V::Clean => "clean",
            V::CleanComplete => "clean_complete",
            V::CleanFail => "clean_fail",
            V::Decommission => "decommission",
            V::DecommissionComplete => "decommission_complete",
        }
    }

    /// The row of [`TRANSITIONS`] for this verb.
    pub fn transition(self) -> &'static Transition {
        TRANSITIONS
            .iter()
            .find(|t| t.verb == self)
            .expect("every verb has exactly one row in TRANSITIONS (checked by a test)")
    }

    /// The states this verb may start from (empty: the verb creates a machine).
    pub fn allowed_from(self) -> &'static [MachineState] {
        self.transition().from
    }

    /// The state this verb leads to.
    pub fn target(self) -> MachineState {
        self.transition().to
    }

    /// Verbs that `POST /machines/{id}/actions/{verb}` accepts. Enroll, discover and allocate
    /// have their own endpoints because they carry data. The agent outcomes are actions only
    /// when an admin forces them (see [`Verb::is_agent_outcome`]).
    pub fn is_action(self) -> bool {
        !matches!(self, V::Enroll | V::Discover | V::Allocate)
    }

    /// What the ramdisk agent's report decides (the inspection's facts, a wipe, a written
    /// image): not an ordinary action, since running one by hand would skip what the agent
    /// proves. Only an admin may force one, with a reason; both are recorded.
    pub fn is_agent_outcome(self) -> bool {
        matches!(
            self,
            V::InspectComplete | V::CleanComplete | V::DeployComplete | V::DecommissionComplete
        )
    }
}

/// Where `verb` takes a machine that is in `from`, or `None` when the lifecycle forbids it.
pub fn next_state(from: MachineState, verb: Verb) -> Option<MachineState> {
    let t = verb.transition();
    t.from.contains(&from).then_some(t.to)
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verb::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown verb {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by hand from the lifecycle table in docs/lifecycle.md, independently of
    /// [`TRANSITIONS`]: every (state, verb) pair that is allowed, and where it leads.
    const EXPECTED: &[(&str, &str, &str)] = &[
        ("discovered", "adopt", "enrolled"),
        ("enrolled", "inspect", "inspecting"),
        ("ready", "inspect", "inspecting"),
        ("inspect_failed", "inspect", "inspecting"),
        ("inspecting", "inspect_complete", "ready"),
        ("inspecting", "inspect_fail", "inspect_failed"),
        ("ready", "allocate", "allocated"),
        ("allocated", "deploy", "deploying"),
        ("deploying", "deploy_complete", "deployed"),
        ("deploying", "deploy_fail", "deploy_failed"),
        ("allocated", "release", "cleaning"),
        ("deployed", "release", "cleaning"),
        ("deploy_failed", "release", "cleaning"),
        ("clean_failed", "clean", "cleaning"),
        ("cleaning", "clean_complete", "ready"),
        ("cleaning", "clean_fail", "clean_failed"),
        ("enrolled", "decommission", "decommissioning"),
        ("discovered", "decommission", "decommissioning"),
        ("ready", "decommission", "decommissioning"),
        ("inspect_failed", "decommission", "decommissioning"),
        ("clean_failed", "decommission", "decommissioning"),
        ("decommissioning", "decommission_complete", "decommissioned"),
    ];

    pub fn expected(state: MachineState, verb: Verb) -> Option<MachineState> {
        EXPECTED
            .iter()
            .find(|(s, v, _)| *s == state.as_str() && *v == verb.as_str())
            .map(|(_, _, to)| to.parse().unwrap())
    }

    #[test]
    fn every_state_verb_pair_matches_the_hand_written_list() {
        let mut allowed = 0;
        for state in MachineState::ALL {
            for verb in Verb::ALL {
                assert_eq!(
                    next_state(state, verb),
                    expected(state, verb),
                    "{state} --{verb}-->"
                );
                allowed += usize::from(next_state(state, verb).is_some());
            }
        }
        assert_eq!(allowed, EXPECTED.len());
    }

    #[test]
    fn creation_verbs_start_from_nothing() {
        assert_eq!(Verb::Enroll.allowed_from(), &[] as &[MachineState]);
        assert_eq!(Verb::Enroll.target(), MachineState::Enrolled);
        assert_eq!(Verb::Discover.target(), MachineState::Discovered);
    }

    #[test]
    fn each_verb_has_exactly_one_row() {
        for verb in Verb::ALL {
            assert_eq!(
                TRANSITIONS.iter().filter(|t| t.verb == verb).count(),
                1,
                "{verb}"
            );
        }
    }

    #[test]
    fn decommissioned_is_terminal() {
        for verb in Verb::ALL {
            assert_eq!(
                next_state(MachineState::Decommissioned, verb),
                None,
                "{verb}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for s in MachineState::ALL {
            assert_eq!(s.as_str().parse::<MachineState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for v in Verb::ALL {
            assert_eq!(v.as_str().parse::<Verb>().unwrap(), v);
        }
        assert!("launch".parse::<Verb>().is_err());
    }
}
