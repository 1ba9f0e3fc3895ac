//! What a network-booted machine runs once iPXE asks plinth for its script.
//!
//! The parts:
//! - `settings`: the `[boot]` settings ([`BootSettings`], [`IdleBoot`]);
//! - `decision`: the decision, a pure function of the machine's lifecycle state
//!   ([`script_decision`], reading the state's `NetBoot` in plinth-types' behaviour table),
//!   with the template and event message of each action and the table the database takes;
//! - `templates`: the iPXE templates that turn a decision into a script (shipped defaults,
//!   overridable from a directory, checked at start);
//! - `script`: [`App::boot_script`], which checks the request, records it, decides, and builds
//!   the context a template renders;
//! - `record`: the batch worker that records script requests (one database call per batch);
//! - `tokens`: the agent tokens a ramdisk script hands out, checked and purged.

mod decision;
mod record;
mod script;
mod settings;
mod templates;
mod tokens;

pub use decision::{
    Firmware, ScriptAction, event_message, script_decision, state_table, template_for,
};
pub use record::{BootBatches, BootQueue, MAX_BATCH};
pub use script::{
    BootRequest, Script, ScriptContext, ScriptMachine, ramdisk_args, refusal_context,
    script_context,
};
pub use settings::{BootSettings, IdleBoot};
pub use templates::{DEFAULT_TEMPLATES, TemplateError, Templates};

/// The mode the ramdisk's agent runs in (defined once, in plinth-types, for the agent too).
pub use plinth_types::AgentMode;
