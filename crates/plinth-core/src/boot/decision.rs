//! The boot decision for a script request, as pure functions of the machine's lifecycle state
//! (its [`NetBoot`] in plinth-types' behaviour table) and the settings: which [`ScriptAction`],
//! which template renders it, what its `boot` event says, and the same decision for every
//! state as the table the database's `boot_request_batch` takes.

use plinth_types::behaviour::NetBoot;
use plinth_types::netboot::PxeArch;
use plinth_types::{MachineState, Verb};
use serde::Serialize;

use super::{AgentMode, BootSettings, IdleBoot};
use crate::dhcp::UnknownPolicy;

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

/// The template for an action.
pub fn template_for(action: &ScriptAction) -> &'static str {
    match action {
        ScriptAction::Ramdisk(_) => "ramdisk.ipxe",
        ScriptAction::LocalBoot => "localboot.ipxe",
        ScriptAction::PowerOff => "poweroff.ipxe",
        ScriptAction::Wait(_) => "wait.ipxe",
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
}
