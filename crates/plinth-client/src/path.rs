//! Every `/api/v1` path a client asks for, built in one place. Each function returns the path
//! from the API's root (`/api/v1/...`), without a query; names and ids are percent-encoded as
//! one path segment, so a name with `/` or `?` stays one segment.
//!
//! Ids are `impl Display`: the async client passes `Uuid`s, the agent the machine id as the
//! kernel command line gave it (plinth, not the agent, judges it).

use std::fmt::Display;

use plinth_types::percent_encode;

/// The REST API's root.
pub const ROOT: &str = "/api/v1";

fn seg(v: impl Display) -> String {
    percent_encode(&v.to_string())
}

pub fn racks() -> String {
    format!("{ROOT}/racks")
}

pub fn rack(name: &str) -> String {
    format!("{ROOT}/racks/{}", seg(name))
}

pub fn machines() -> String {
    format!("{ROOT}/machines")
}

pub fn machine(id: impl Display) -> String {
    format!("{ROOT}/machines/{}", seg(id))
}

/// `POST`: a lifecycle verb (`inspect`, `deploy`, `release`, ...).
pub fn machine_action(id: impl Display, verb: &str) -> String {
    format!("{}/actions/{}", machine(id), seg(verb))
}

pub fn machine_events(id: impl Display) -> String {
    format!("{}/events", machine(id))
}

pub fn machine_console(id: impl Display) -> String {
    format!("{}/console", machine(id))
}

pub fn machine_console_log(id: impl Display) -> String {
    format!("{}/console/log", machine(id))
}

pub fn machine_console_endpoint(id: impl Display) -> String {
    format!("{}/bmc/console", machine(id))
}

pub fn machine_power(id: impl Display) -> String {
    format!("{}/power", machine(id))
}

pub fn bmc_scans() -> String {
    format!("{ROOT}/bmc/scans")
}

pub fn bmc_scan(id: impl Display) -> String {
    format!("{ROOT}/bmc/scans/{}", seg(id))
}

pub fn machine_bmc_rotate(id: impl Display) -> String {
    format!("{}/bmc/rotate", machine(id))
}

pub fn machine_boot_device(id: impl Display) -> String {
    format!("{}/boot-device", machine(id))
}

pub fn machine_deployment(id: impl Display) -> String {
    format!("{}/deployment", machine(id))
}

/// The agent's: `POST` the inspection report.
pub fn inspection(id: impl Display) -> String {
    format!("{}/inspection", machine(id))
}

/// The agent's: `GET` how to wipe.
pub fn clean_plan(id: impl Display) -> String {
    format!("{}/clean-plan", machine(id))
}

/// The agent's: `POST` the clean report.
pub fn clean_report(id: impl Display) -> String {
    format!("{}/clean", machine(id))
}

/// The agent's: `GET` what to write.
pub fn deploy_manifest(id: impl Display) -> String {
    format!("{}/deployment/manifest", machine(id))
}

/// The agent's: `POST` how far the image is written.
pub fn deploy_progress(id: impl Display) -> String {
    format!("{}/deploy-progress", machine(id))
}

/// The agent's: `POST` the deploy outcome.
pub fn deploy_report(id: impl Display) -> String {
    format!("{}/deploy-report", machine(id))
}

pub fn allocations() -> String {
    format!("{ROOT}/allocations")
}

pub fn allocation(id: impl Display) -> String {
    format!("{ROOT}/allocations/{}", seg(id))
}

pub fn subnets() -> String {
    format!("{ROOT}/subnets")
}

pub fn subnet(id: impl Display) -> String {
    format!("{ROOT}/subnets/{}", seg(id))
}

pub fn leases() -> String {
    format!("{ROOT}/leases")
}

pub fn images() -> String {
    format!("{ROOT}/images")
}

pub fn image(name: &str) -> String {
    format!("{ROOT}/images/{}", seg(name))
}

pub fn jobs() -> String {
    format!("{ROOT}/jobs")
}

pub fn job(id: impl Display) -> String {
    format!("{ROOT}/jobs/{}", seg(id))
}

pub fn job_cancel(id: impl Display) -> String {
    format!("{}/cancel", job(id))
}

pub fn pools() -> String {
    format!("{ROOT}/pools")
}

pub fn pool(name: &str) -> String {
    format!("{ROOT}/pools/{}", seg(name))
}

// --- BIOS ---
pub fn machine_bios(id: impl Display) -> String {
    format!("{}/bios", machine(id))
}

pub fn bios_profiles() -> String {
    format!("{ROOT}/bios-profiles")
}

pub fn bios_profile(name: &str) -> String {
    format!("{ROOT}/bios-profiles/{}", seg(name))
}

pub fn pool_bios_profile(name: &str) -> String {
    format!("{}/bios-profile", pool(name))
}

pub fn tokens() -> String {
    format!("{ROOT}/tokens")
}

pub fn token(name: &str) -> String {
    format!("{ROOT}/tokens/{}", seg(name))
}

pub fn events() -> String {
    format!("{ROOT}/events")
}

pub fn events_stream() -> String {
    format!("{ROOT}/events/stream")
}

pub fn webhooks() -> String {
    format!("{ROOT}/webhooks")
}

pub fn webhook(id: impl Display) -> String {
    format!("{ROOT}/webhooks/{id}")
}

pub fn webhook_deliveries(id: impl Display) -> String {
    format!("{}/deliveries", webhook(id))
}

// ---------------------------------------------------------------- firmware (issue 21)

pub fn machine_firmware(id: impl Display) -> String {
    format!("{}/firmware", machine(id))
}

pub fn machine_firmware_read(id: impl Display) -> String {
    format!("{}/firmware/read", machine(id))
}

pub fn firmware_image(name: &str) -> String {
    format!(
        "/api/v1/firmware/images/{}",
        plinth_types::percent_encode(name)
    )
}

pub fn firmware_rollouts() -> String {
    "/api/v1/firmware/rollouts".to_owned()
}

pub fn firmware_rollout(id: impl Display) -> String {
    format!("/api/v1/firmware/rollouts/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_apis_and_names_stay_one_segment() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            machine_action(id, "inspect"),
            "/api/v1/machines/00000000-0000-0000-0000-000000000000/actions/inspect"
        );
        assert_eq!(
            deploy_manifest("m"),
            "/api/v1/machines/m/deployment/manifest"
        );
        assert_eq!(image("a b/c?d"), "/api/v1/images/a%20b%2Fc%3Fd");
        assert_eq!(job_cancel(7), "/api/v1/jobs/7/cancel");
        assert_eq!(rack("r12"), "/api/v1/racks/r12");
    }
}
