//! `plinth machine bmc-rotate ID`: a new BMC password only plinth knows (issue 21, part 4).
//! The job is followed to its end unless `--no-wait`; nothing printed holds the password.

use std::time::Duration;

use uuid::Uuid;

use super::{Api, jobs};

/// How long `bmc-rotate` waits for its job: a few BMC calls, each under the call timeout.
const WAIT: Duration = Duration::from_secs(600);

pub async fn rotate(api: &Api, id: Uuid, no_wait: bool) -> anyhow::Result<()> {
    let job = api.client.rotate_bmc_password(id).await?;
    jobs::submit(api, job, (!no_wait).then_some(WAIT)).await
}
