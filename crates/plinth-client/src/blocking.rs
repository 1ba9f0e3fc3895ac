//! The blocking client of the agent's endpoints, on ureq (feature `blocking`).
//!
//! The ramdisk agent has no async runtime and must stay small: ureq with rustls is all it
//! links for HTTP. It shares the paths, the error type and the decoding of answers with the
//! async [`Client`](crate::Client), so the agent and the server cannot disagree on a path or a
//! body. Retrying is the agent's business (it knows its deadline and its console); a call here
//! is one attempt, and [`Error::is_transient`] says whether another may help.

use std::io::Read;
use std::time::Duration;

use plinth_types::MachineState;
use plinth_types::api::{
    CleanPlan, CleanReport, DeployManifest, DeployProgress, DeployReport, InspectionReport,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Error, decode, path};

/// How long a progress report may take: it is only a report, and the write goes on meanwhile.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent reads of the machine plinth answers a report with: its state, nothing more.
/// The answer is a whole [`Machine`](plinth_types::api::Machine), but once plinth has taken the
/// report, an agent from a ramdisk built before the server must not fail on a field it does
/// not use; and decoding the whole machine added 110 KiB to the agent (3.4 MiB stripped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Taken {
    pub state: MachineState,
}

/// One machine's agent talking to plinth with the machine's one-time token. Cheap to clone;
/// clones share connections (the progress thread and the main one).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Client")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// The API at `base_url` (a trailing `/` is dropped) with the agent's `token`. Connecting
    /// may take [`DEFAULT_CONNECT_TIMEOUT`]; a JSON call [`DEFAULT_TIMEOUT`] in all; a download
    /// as long as data keeps coming, with at most [`DEFAULT_TIMEOUT`] between reads.
    pub fn new(base_url: &str, token: &str) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(DEFAULT_CONNECT_TIMEOUT)
            .timeout_read(DEFAULT_TIMEOUT)
            .timeout_write(DEFAULT_TIMEOUT)
            .build();
        Client {
            agent,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// The full URL of a path on the API's server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        self.agent
            .request(method, url)
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// Sends, then reads the whole answer and decodes it (an error status as well).
    fn send<T: DeserializeOwned>(
        &self,
        req: ureq::Request,
        url: &str,
        body: Option<&[u8]>,
    ) -> Result<T, Error> {
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_bytes(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(Error::Transport {
                    base: self.base.clone(),
                    source: Box::new(t),
                });
            }
        };
        let (status, reason) = (resp.status(), resp.status_text().to_owned());
        let mut bytes = Vec::new();
        resp.into_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Body {
                url: url.to_owned(),
                source: Box::new(e),
            })?;
        decode(status, &reason, &bytes, url)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let url = self.url(path);
        self.send(
            self.request("GET", &url).timeout(DEFAULT_TIMEOUT),
            &url,
            None,
        )
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<T, Error> {
        let url = self.url(path);
        // (The API's own types always serialize: no maps with non-string keys.)
        let json = serde_json::to_vec(body)
            .map_err(|e| Error::Config(format!("the request body for {url}: {e}")))?;
        self.send(
            self.request("POST", &url).timeout(timeout),
            &url,
            Some(&json),
        )
    }

    /// The inspection report; the machine's state once plinth has taken it.
    pub fn report_inspection(
        &self,
        machine: &str,
        report: &InspectionReport,
    ) -> Result<Taken, Error> {
        self.post(&path::inspection(machine), report, DEFAULT_TIMEOUT)
    }

    /// How to wipe this machine's disks.
    pub fn clean_plan(&self, machine: &str) -> Result<CleanPlan, Error> {
        self.get(&path::clean_plan(machine))
    }

    pub fn report_clean(&self, machine: &str, report: &CleanReport) -> Result<Taken, Error> {
        self.post(&path::clean_report(machine), report, DEFAULT_TIMEOUT)
    }

    /// What to write, and where from.
    pub fn deploy_manifest(&self, machine: &str) -> Result<DeployManifest, Error> {
        self.get(&path::deploy_manifest(machine))
    }

    /// How far the image is written (a short timeout: it is only a report).
    pub fn report_deploy_progress(
        &self,
        machine: &str,
        progress: &DeployProgress,
    ) -> Result<(), Error> {
        self.post(&path::deploy_progress(machine), progress, PROGRESS_TIMEOUT)
    }

    pub fn report_deploy(&self, machine: &str, report: &DeployReport) -> Result<Taken, Error> {
        self.post(&path::deploy_report(machine), report, DEFAULT_TIMEOUT)
    }

    /// Opens a file plinth serves (a manifest's `url_path`, under `/boot/`) for streaming: the
    /// body is read as the caller consumes it, never held whole.
    pub fn download(&self, url_path: &str) -> Result<Box<dyn Read + Send + Sync>, Error> {
        let url = self.url(url_path);
        match self.request("GET", &url).call() {
            Ok(resp) => Ok(resp.into_reader()),
            Err(ureq::Error::Status(_, resp)) => {
                let (status, reason) = (resp.status(), resp.status_text().to_owned());
                let mut bytes = Vec::new();
                resp.into_reader()
                    .take(64 * 1024)
                    .read_to_end(&mut bytes)
                    .ok();
                Err(decode::<()>(status, &reason, &bytes, &url)
                    .err()
                    .unwrap_or(Error::Status {
                        status,
                        reason,
                        url,
                    }))
            }
            Err(ureq::Error::Transport(t)) => Err(Error::Transport {
                base: self.base.clone(),
                source: Box::new(t),
            }),
        }
    }
}
