//! The async client on reqwest: one method per `/api/v1` operation.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod bios;

use plinth_types::api::*;
use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::query::{
    DeliveryFilter, EventFilter, ImageUpload, JobFilter, LeaseFilter, MachineFilter, StreamFilter,
};
use crate::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Error, decode, path};

/// How long an upload may take: a disk image of many GiB over a slow link. (Its connect
/// timeout still applies; what would hang is caught by the server's own limits.)
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Builds a [`Client`]: the API's base URL, then a token, timeouts and extra CAs as needed.
#[must_use]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    roots: Vec<reqwest::Certificate>,
    /// The same CAs for the console's WebSocket, which has its own TLS.
    ws_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    pool_max_idle_per_host: Option<usize>,
}

impl ClientBuilder {
    /// The bearer token sent with every call (an API token, or an agent's one-time token).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The bearer token, when there is one (a CLI whose token is optional).
    pub fn token_opt(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// How long a call may take, from connecting to the end of its answer ([`DEFAULT_TIMEOUT`]);
    /// `None`: no limit. Uploads have their own, longer limit.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Idle keep-alive connections kept per host (reqwest's default when unset): a benchmark
    /// with many concurrent callers keeps them all.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = Some(n);
        self
    }

    /// Trusts the CA certificates of a PEM bundle for an `https://` API, besides the built-in
    /// roots (a plinth whose certificate comes from the operator's own CA). A bundle without a
    /// certificate is an error: a wrong file should not fail later as an unknown issuer.
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::Config(e.to_string()))?;
        if certs.is_empty() {
            return Err(Error::Config("no PEM certificate in it".into()));
        }
        self.roots.extend(certs);
        self.ws_roots.extend(crate::console::pem_certs(pem)?);
        Ok(self)
    }

    /// [`ca_pem`](Self::ca_pem) of a file; errors name the file.
    pub fn ca_file(self, file: &Path) -> Result<Self, Error> {
        let pem =
            std::fs::read(file).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
        self.ca_pem(&pem)
            .map_err(|e| Error::Config(format!("{}: {e}", file.display())))
    }

    pub fn build(self) -> Result<Client, Error> {
        let mut b = reqwest::Client::builder().connect_timeout(self.connect_timeout);
        if let Some(t) = self.timeout {
            b = b.timeout(t);
        }
        if let Some(n) = self.pool_max_idle_per_host {
            b = b.pool_max_idle_per_host(n);
        }
        for cert in self.roots {
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client {
            http,
            base: self.base.trim_end_matches('/').into(),
            token: self.token.map(Into::into),
            ws_roots: self.ws_roots.into(),
            connect_timeout: self.connect_timeout,
        })
    }
}

/// The async client of `/api/v1`. Cheap to clone (one connection pool, shared).
///
/// Every method is one HTTP call and returns the API's type, or an [`Error`] that carries the
/// API's error body. Nothing is retried: whether a call is safe to repeat is the caller's call
/// (see [`Error::is_transient`]).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Arc<str>,
    token: Option<Arc<str>>,
    ws_roots: Arc<[rustls_pki_types::CertificateDer<'static>]>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A builder for the API at `base_url` (`https://plinth.example:8443`; a trailing `/` is
    /// dropped), with [`DEFAULT_TIMEOUT`] and [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base_url.into(),
            token: None,
            timeout: Some(DEFAULT_TIMEOUT),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            roots: Vec::new(),
            ws_roots: Vec::new(),
            pool_max_idle_per_host: None,
        }
    }

    /// The API at `base_url` with `token` and the defaults.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Result<Client, Error> {
        Client::builder(base_url).token(token).build()
    }

    /// The same API and connection pool with another token (a test acting as several roles).
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client {
            token: Some(token.into().into()),
            ..self.clone()
        }
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> (RequestBuilder, String) {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        (req, url)
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder, url: &str) -> Result<T, Error> {
        let resp = req.send().await.map_err(|e| Error::Transport {
            base: self.base.to_string(),
            source: Box::new(e),
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| Error::Body {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
        decode(
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            &body,
            url,
        )
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        if_match: Option<i64>,
    ) -> Result<T, Error> {
        let (mut req, url) = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(v) = if_match {
            req = req.header("If-Match", format!("\"{v}\""));
        }
        self.send(req, &url).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::GET, path, None::<&()>, None).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        self.call(Method::POST, path, Some(body), None).await
    }

    async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        self.call(Method::PATCH, path, Some(body), None).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(Method::DELETE, path, None::<&()>, None).await
    }

    // ------------------------------------------------------------------------ racks

    pub async fn create_rack(&self, req: &RackCreate) -> Result<Rack, Error> {
        self.post(&path::racks(), req).await
    }

    pub async fn list_racks(&self) -> Result<Vec<Rack>, Error> {
        self.get(&path::racks()).await
    }

    pub async fn get_rack(&self, name: &str) -> Result<Rack, Error> {
        self.get(&path::rack(name)).await
    }

    pub async fn update_rack(&self, name: &str, patch: &RackPatch) -> Result<Rack, Error> {
        self.patch(&path::rack(name), patch).await
    }

    pub async fn delete_rack(&self, name: &str) -> Result<(), Error> {
        self.delete(&path::rack(name)).await
    }

    // ------------------------------------------------------------------------ machines

    pub async fn enroll_machine(&self, req: &MachineCreate) -> Result<Machine, Error> {
        self.post(&path::machines(), req).await
    }

    /// One page; follow `next_cursor` with [`MachineFilter::cursor`] for the next.
    pub async fn list_machines(&self, filter: &MachineFilter) -> Result<MachinePage, Error> {
        self.get(&format!("{}{}", path::machines(), filter.to_query()))
            .await
    }

    pub async fn get_machine(&self, id: Uuid) -> Result<Machine, Error> {
        self.get(&path::machine(id)).await
    }

    pub async fn update_machine(&self, id: Uuid, patch: &MachinePatch) -> Result<Machine, Error> {
        self.patch(&path::machine(id), patch).await
    }

    /// A lifecycle verb (`inspect`, `release`, `maintenance_on`, ...). `if_match`: only if the
    /// machine is still at this `state_version` (else 409 `version_mismatch` with the current
    /// state and version).
    pub async fn machine_action(
        &self,
        id: Uuid,
        verb: &str,
        req: &ActionRequest,
        if_match: Option<i64>,
    ) -> Result<Machine, Error> {
        self.call(
            Method::POST,
            &path::machine_action(id, verb),
            Some(req),
            if_match,
        )
        .await
    }

    /// The `deploy` verb, with what to write.
    pub async fn deploy_machine(
        &self,
        id: Uuid,
        req: &DeployRequest,
        if_match: Option<i64>,
    ) -> Result<Machine, Error> {
        self.call(
            Method::POST,
            &path::machine_action(id, "deploy"),
            Some(req),
            if_match,
        )
        .await
    }

    pub async fn get_deployment(&self, id: Uuid) -> Result<Deployment, Error> {
        self.get(&path::machine_deployment(id)).await
    }

    /// The last `max_bytes` (at most 4 MiB) of the machine's console recording, as printed.
    pub async fn console_log(&self, id: Uuid, max_bytes: Option<u32>) -> Result<Vec<u8>, Error> {
        let q = max_bytes
            .map(|n| format!("?max_bytes={n}"))
            .unwrap_or_default();
        let (req, url) = self.request(
            Method::GET,
            &format!("{}{q}", path::machine_console_log(id)),
        );
        let resp = req.send().await.map_err(|e| Error::Transport {
            base: self.base.to_string(),
            source: Box::new(e),
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| Error::Body {
            url: url.clone(),
            source: Box::new(e),
        })?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        decode::<()>(
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            &body,
            &url,
        )?;
        Ok(Vec::new())
    }

    /// Attaches to the machine's serial console (a WebSocket with this client's token and
    /// trust). Refusals are the API's errors: 401, 403 (a viewer), 404, 409 (decommissioned).
    pub async fn console(&self, id: Uuid) -> Result<crate::console::Console, Error> {
        crate::console::Console::open(
            crate::console::Dial {
                base: &self.base,
                token: self.token.as_deref(),
                roots: &self.ws_roots,
                connect_timeout: self.connect_timeout,
            },
            &path::machine_console(id),
        )
        .await
    }

    /// Records the IPMI endpoint of the machine's Redfish BMC console (`None` removes it).
    pub async fn set_console_endpoint(
        &self,
        id: Uuid,
        endpoint: Option<&ConsoleEndpoint>,
    ) -> Result<ConsoleInfo, Error> {
        match endpoint {
            Some(e) => {
                self.call(
                    Method::PUT,
                    &path::machine_console_endpoint(id),
                    Some(e),
                    None,
                )
                .await
            }
            None => {
                self.call(
                    Method::DELETE,
                    &path::machine_console_endpoint(id),
                    None::<&()>,
                    None,
                )
                .await
            }
        }
    }

    pub async fn machine_events(&self, id: Uuid, filter: &EventFilter) -> Result<EventPage, Error> {
        self.get(&format!(
            "{}{}",
            path::machine_events(id),
            filter.to_query()
        ))
        .await
    }

    /// Queues a power job (202); follow it with [`get_job`](Self::get_job).
    pub async fn power(&self, id: Uuid, req: &PowerRequest) -> Result<Job, Error> {
        self.post(&path::machine_power(id), req).await
    }

    /// Queues a rotation of the machine's BMC password (202); the job's result says when it
    /// was rotated, never the password.
    pub async fn rotate_bmc_password(&self, id: Uuid) -> Result<Job, Error> {
        self.post(&path::machine_bmc_rotate(id), &serde_json::json!({}))
            .await
    }

    /// Queues a scan of a BMC network (202; admins).
    pub async fn create_bmc_scan(
        &self,
        req: &plinth_types::scan::BmcScanRequest,
    ) -> Result<plinth_types::scan::BmcScan, Error> {
        self.post(&path::bmc_scans(), req).await
    }

    /// A scan and what it found so far.
    pub async fn get_bmc_scan(&self, id: Uuid) -> Result<plinth_types::scan::BmcScan, Error> {
        self.get(&path::bmc_scan(id)).await
    }

    /// Queues a boot-device job (202).
    pub async fn set_boot_device(&self, id: Uuid, req: &BootDeviceRequest) -> Result<Job, Error> {
        self.post(&path::machine_boot_device(id), req).await
    }

    // ------------------------------------------------------------------------ firmware

    /// Says what a catalog image of kind firmware installs.
    pub async fn describe_firmware_image(
        &self,
        name: &str,
        req: &plinth_types::firmware::FirmwareImageDescribe,
    ) -> Result<plinth_types::firmware::FirmwareImage, Error> {
        self.call(Method::PUT, &path::firmware_image(name), Some(req), None)
            .await
    }

    /// A machine's firmware inventory as its BMC last reported it.
    pub async fn machine_firmware(
        &self,
        id: Uuid,
    ) -> Result<plinth_types::firmware::FirmwareInventory, Error> {
        self.get(&path::machine_firmware(id)).await
    }

    /// Queues a firmware update (202).
    pub async fn update_firmware(
        &self,
        id: Uuid,
        req: &plinth_types::firmware::FirmwareUpdateRequest,
    ) -> Result<Job, Error> {
        self.post(&path::machine_firmware(id), req).await
    }

    /// Queues a firmware inventory read (202).
    pub async fn read_firmware(&self, id: Uuid) -> Result<Job, Error> {
        self.post(&path::machine_firmware_read(id), &serde_json::json!({}))
            .await
    }

    pub async fn create_rollout(
        &self,
        req: &plinth_types::firmware::RolloutRequest,
    ) -> Result<plinth_types::firmware::Rollout, Error> {
        self.post(&path::firmware_rollouts(), req).await
    }

    pub async fn list_rollouts(&self) -> Result<Vec<plinth_types::firmware::Rollout>, Error> {
        self.get(&path::firmware_rollouts()).await
    }

    pub async fn get_rollout(&self, id: Uuid) -> Result<plinth_types::firmware::Rollout, Error> {
        self.get(&path::firmware_rollout(id)).await
    }

    // ------------------------------------------------------------------------ the agent's

    /// The inspection agent's report (with the machine's one-time agent token).
    pub async fn report_inspection(
        &self,
        id: Uuid,
        report: &InspectionReport,
    ) -> Result<Machine, Error> {
        self.post(&path::inspection(id), report).await
    }

    pub async fn clean_plan(&self, id: Uuid) -> Result<CleanPlan, Error> {
        self.get(&path::clean_plan(id)).await
    }

    pub async fn report_clean(&self, id: Uuid, report: &CleanReport) -> Result<Machine, Error> {
        self.post(&path::clean_report(id), report).await
    }

    pub async fn deploy_manifest(&self, id: Uuid) -> Result<DeployManifest, Error> {
        self.get(&path::deploy_manifest(id)).await
    }

    pub async fn report_deploy_progress(
        &self,
        id: Uuid,
        progress: &DeployProgress,
    ) -> Result<(), Error> {
        self.post(&path::deploy_progress(id), progress).await
    }

    pub async fn report_deploy(&self, id: Uuid, report: &DeployReport) -> Result<Machine, Error> {
        self.post(&path::deploy_report(id), report).await
    }

    // ------------------------------------------------------------------------ allocations

    pub async fn allocate(&self, req: &AllocationRequest) -> Result<Allocation, Error> {
        self.post(&path::allocations(), req).await
    }

    /// The caller's allocations (everyone's for operators); `all`: released ones too.
    pub async fn list_allocations(&self, all: bool) -> Result<Vec<Allocation>, Error> {
        let q = crate::query::encode(&[("all", all.then(|| "true".to_owned()))]);
        self.get(&format!("{}{q}", path::allocations())).await
    }

    pub async fn get_allocation(&self, id: Uuid) -> Result<Allocation, Error> {
        self.get(&path::allocation(id)).await
    }

    /// Releases an allocation: its machines go to cleaning.
    pub async fn release_allocation(&self, id: Uuid) -> Result<Allocation, Error> {
        self.delete(&path::allocation(id)).await
    }

    // ------------------------------------------------------------------------ subnets, leases

    pub async fn create_subnet(&self, req: &SubnetCreate) -> Result<Subnet, Error> {
        self.post(&path::subnets(), req).await
    }

    pub async fn list_subnets(&self) -> Result<Vec<Subnet>, Error> {
        self.get(&path::subnets()).await
    }

    pub async fn get_subnet(&self, id: Uuid) -> Result<Subnet, Error> {
        self.get(&path::subnet(id)).await
    }

    pub async fn update_subnet(&self, id: Uuid, patch: &SubnetPatch) -> Result<Subnet, Error> {
        self.patch(&path::subnet(id), patch).await
    }

    pub async fn delete_subnet(&self, id: Uuid) -> Result<(), Error> {
        self.delete(&path::subnet(id)).await
    }

    pub async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, Error> {
        self.get(&format!("{}{}", path::leases(), filter.to_query()))
            .await
    }

    // ------------------------------------------------------------------------ images

    pub async fn list_images(&self) -> Result<Vec<Image>, Error> {
        self.get(&path::images()).await
    }

    pub async fn get_image(&self, name: &str) -> Result<Image, Error> {
        self.get(&path::image(name)).await
    }

    /// Registers a file already under the server's images root.
    pub async fn register_image(&self, req: &ImageRegister) -> Result<Image, Error> {
        self.post(&path::images(), req).await
    }

    /// Uploads a file as the image `name`, streamed: `body` is any reqwest body (for a file,
    /// `reqwest::Body::wrap_stream` of a `ReaderStream`), `len` its exact length (sent as
    /// Content-Length, which the server checks). The call may take up to a day.
    pub async fn upload_image(
        &self,
        name: &str,
        upload: &ImageUpload,
        body: impl Into<reqwest::Body>,
        len: u64,
    ) -> Result<Image, Error> {
        let path = format!("{}{}", path::image(name), upload.to_query());
        let (req, url) = self.request(Method::PUT, &path);
        let req = req
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .timeout(UPLOAD_TIMEOUT)
            .body(body);
        self.send(req, &url).await
    }

    /// Deletes an image nothing boots (an uploaded image's file goes with it).
    pub async fn delete_image(&self, name: &str) -> Result<Image, Error> {
        self.delete(&path::image(name)).await
    }

    // ------------------------------------------------------------------------ jobs

    /// One page of jobs, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, Error> {
        self.get(&format!("{}{}", path::jobs(), filter.to_query()))
            .await
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Job, Error> {
        self.get(&path::job(id)).await
    }

    /// Cancels a queued job (and the later jobs of its action).
    pub async fn cancel_job(&self, id: Uuid) -> Result<Job, Error> {
        self.call(Method::POST, &path::job_cancel(id), None::<&()>, None)
            .await
    }

    // ------------------------------------------------------------------------ pools

    pub async fn list_pools(&self) -> Result<Vec<Pool>, Error> {
        self.get(&path::pools()).await
    }

    /// Sets a pool's wipe method (`None`: back to the default).
    pub async fn update_pool(&self, name: &str, req: &PoolUpdate) -> Result<Pool, Error> {
        self.call(Method::PUT, &path::pool(name), Some(req), None)
            .await
    }

    // ------------------------------------------------------------------------ tokens

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.get(&path::tokens()).await
    }

    /// Makes a token; the answer holds its secret, shown this once.
    pub async fn create_token(&self, req: &TokenCreate) -> Result<TokenCreated, Error> {
        self.post(&path::tokens(), req).await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<TokenInfo, Error> {
        self.delete(&path::token(name)).await
    }

    // ------------------------------------------------------------------------ events

    /// The audit log.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<EventPage, Error> {
        self.get(&format!("{}{}", path::events(), filter.to_query()))
            .await
    }

    /// Follows the event stream: [`EventStream::next`] gives each event as it comes. The
    /// connection has no overall timeout; `idle` is the longest silence accepted (the server
    /// sends a comment every 15 s by default), after which `next` fails and the caller may
    /// open the stream again after [`EventStream::last_id`].
    pub async fn event_stream(
        &self,
        filter: &StreamFilter,
        idle: Duration,
    ) -> Result<EventStream, Error> {
        let (req, url) = self.request(
            Method::GET,
            &format!("{}{}", path::events_stream(), filter.to_query()),
        );
        let resp = req
            .header(reqwest::header::ACCEPT, "text/event-stream")
            // far beyond any stream; silence is caught by `idle` instead
            .timeout(Duration::from_secs(100 * 365 * 24 * 3600))
            .send()
            .await
            .map_err(|e| Error::Transport {
                base: self.base.to_string(),
                source: Box::new(e),
            })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(decode::<()>(
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &body,
                &url,
            )
            .err()
            .unwrap_or_else(|| Error::Config(format!("{url}: unexpected answer {status}"))));
        }
        Ok(EventStream {
            resp,
            url,
            idle,
            parser: Default::default(),
            ready: Default::default(),
            last_id: filter.after,
        })
    }

    // ------------------------------------------------------------------------ webhooks

    /// Registers a webhook; the answer holds its secret, shown only this once.
    pub async fn create_webhook(
        &self,
        req: &plinth_types::feed::WebhookCreate,
    ) -> Result<plinth_types::feed::WebhookCreated, Error> {
        self.post(&path::webhooks(), req).await
    }

    pub async fn list_webhooks(&self) -> Result<Vec<plinth_types::feed::Webhook>, Error> {
        self.get(&path::webhooks()).await
    }

    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), Error> {
        self.delete(&path::webhook(id)).await
    }

    /// A webhook's deliveries, newest first.
    pub async fn webhook_deliveries(
        &self,
        id: Uuid,
        filter: &DeliveryFilter,
    ) -> Result<Vec<plinth_types::feed::Delivery>, Error> {
        self.get(&format!(
            "{}{}",
            path::webhook_deliveries(id),
            filter.to_query()
        ))
        .await
    }
}

/// An open event stream (see [`Client::event_stream`]).
pub struct EventStream {
    resp: reqwest::Response,
    url: String,
    idle: Duration,
    parser: crate::sse::Parser,
    ready: std::collections::VecDeque<crate::sse::Message>,
    last_id: Option<i64>,
}

impl EventStream {
    /// The next event; `None` when the server ended the stream (it is stopping: open it again
    /// after [`last_id`](Self::last_id)).
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            while let Some(m) = self.ready.pop_front() {
                if m.id.is_none() && m.data.is_empty() {
                    continue;
                }
                let event: Event = serde_json::from_str(&m.data).map_err(|e| Error::Decode {
                    url: self.url.clone(),
                    source: e,
                })?;
                self.last_id = Some(event.id);
                return Ok(Some(event));
            }
            let chunk = tokio::time::timeout(self.idle, self.resp.chunk())
                .await
                .map_err(|_| Error::Body {
                    url: self.url.clone(),
                    source: Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the event stream was silent for {:?}", self.idle),
                    )),
                })?
                .map_err(|e| Error::Body {
                    url: self.url.clone(),
                    source: Box::new(e),
                })?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            let chunk: &[u8] = &chunk;
            let msgs = self
                .parser
                .push(chunk)
                .map_err(|e| Error::Config(format!("{}: {e}", self.url)))?;
            self.ready.extend(msgs);
        }
    }

    /// The id of the last event received (or the stream's starting point): where to continue.
    pub fn last_id(&self) -> Option<i64> {
        self.last_id
    }
}
