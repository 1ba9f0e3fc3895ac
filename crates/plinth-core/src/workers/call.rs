//! One BMC call under its timeout, and what a failed call means for the job: a [`Failure`] is
//! transient (the job is tried again after a backoff) or final, with a kind that names what a
//! technician would fix.

use std::time::Duration;

use plinth_bmc::{BmcError, PowerState};

/// Why a job attempt failed: retried when transient.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) transient: bool,
    /// `auth`, `unreachable`, `timeout`, `rejected`, `busy`, `unsupported`, `protocol`,
    /// `reverted`, `config`, `power_wait`.
    pub(super) kind: &'static str,
    pub(super) message: String,
}

impl From<BmcError> for Failure {
    fn from(e: BmcError) -> Failure {
        let kind = match &e {
            BmcError::Unreachable(_) => "unreachable",
            BmcError::Timeout => "timeout",
            BmcError::Auth => "auth",
            BmcError::Rejected(_) => "rejected",
            BmcError::Busy(_) => "busy",
            BmcError::Unsupported(_) => "unsupported",
            BmcError::Protocol(_) => "protocol",
            BmcError::Reverted { .. } => "reverted",
            BmcError::MediaNotInserted { .. } | BmcError::MediaNotEjected { .. } => "reverted",
        };
        Failure {
            transient: e.is_transient(),
            kind,
            message: e.to_string(),
        }
    }
}

pub(super) fn final_failure(kind: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        transient: false,
        kind,
        message: message.into(),
    }
}

/// One BMC call under the per-call timeout.
pub(super) async fn call<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = plinth_bmc::Result<T>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let mut f = Failure::from(e);
            f.message = format!("{what}: {}", f.message);
            Err(f)
        }
        Err(_) => Err(Failure {
            transient: true,
            kind: "timeout",
            message: format!("{what}: no answer within {} s", limit.as_secs_f64()),
        }),
    }
}

pub(super) fn power_str(p: PowerState) -> &'static str {
    match p {
        PowerState::On => "on",
        PowerState::Off => "off",
        PowerState::PoweringOn => "powering_on",
        PowerState::PoweringOff => "powering_off",
    }
}
