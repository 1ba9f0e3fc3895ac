//! The machine page's console section (web/templates/machine_console.html, web/static/console.js):
//! whether the user may attach, why the console is unavailable, the recording's last lines.

use minijinja::{Value, context};
use plinth_core::auth::{Permission, allows};
use plinth_core::{App, Principal};
use uuid::Uuid;

/// The section's context; `None` (no section) for a user who may not read the console.
pub(crate) async fn section(app: &App, who: &Principal, id: Uuid) -> Option<Value> {
    let info = app.console_info(who, id).await.ok()?;
    let lines = app
        .console_last_lines(id, 40, 6000)
        .await
        .unwrap_or_default();
    Some(context! {
        attach => allows(who.role, Permission::AttachConsole),
        unavailable => info.unavailable,
        viewers => info.viewers,
        log_bytes => u64::try_from(info.log_bytes).unwrap_or(0),
        last_lines => lines.join("\n"),
    })
}
