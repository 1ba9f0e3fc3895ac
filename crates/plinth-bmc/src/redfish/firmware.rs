//! Firmware inventory and updates over Redfish (issue 21).
//!
//! - Inventory: the service root's `UpdateService`, its `FirmwareInventory` collection, each
//!   member read (at most [`MAX_ITEMS`]). A BMC without one (sushy-tools serves an
//!   UpdateService but no inventory) answers what its ComputerSystem says: `BiosVersion` as
//!   the BIOS item.
//! - Updates: `#UpdateService.SimpleUpdate` (`ImageURI`, `Targets`) or a multipart push to
//!   `MultipartHttpPushUri` (`UpdateParameters` JSON and `UpdateFile`), falling back to the
//!   older `HttpPushUri` (the raw image). The answer is DSP0266's asynchronous pattern:
//!   `202 Accepted` with `Location` (the task monitor), a body that may be the Task; a BMC
//!   that finishes at once answers 200/204.
//! - Tasks: the Task resource when known (TaskState, TaskStatus, PercentComplete, Messages),
//!   else the monitor (202 while running; the Task or nothing when done).
//!
//! Every URI the BMC hands back goes through [`Redfish::bmc_url`] before it is used.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Auth, Link, Redfish, read_limited, status_error, transport_error};
use crate::firmware::{
    ComponentKind, FirmwareItem, TaskPhase, TaskStatus, UpdateCapabilities, UpdateTask, classify,
    parse_task,
};
use crate::{BmcError, Result};

/// Inventory items read at most.
pub const MAX_ITEMS: usize = 64;
/// The largest image plinth pushes to a BMC.
pub const MAX_IMAGE: usize = 512 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Item {
    id: Option<String>,
    name: Option<String>,
    version: Option<String>,
    updateable: Option<bool>,
    software_id: Option<String>,
    #[serde(default)]
    related_item: Vec<Link>,
    #[serde(rename = "@odata.id")]
    odata_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct UpdateService {
    #[serde(rename = "FirmwareInventory")]
    inventory: Option<Link>,
    #[serde(rename = "Actions", default)]
    actions: Value,
    #[serde(rename = "MultipartHttpPushUri")]
    multipart: Option<String>,
    #[serde(rename = "HttpPushUri")]
    http_push: Option<String>,
}

impl Redfish {
    /// The UpdateService's path, from the service root.
    async fn update_service_path(&self) -> Result<String> {
        let (root, _) = self.get::<Value>("/redfish/v1").await?;
        root.get("UpdateService")
            .and_then(|l| l.get("@odata.id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| BmcError::Unsupported("an UpdateService".into()))
    }

    async fn update_service(&self) -> Result<UpdateService> {
        let path = self.update_service_path().await?;
        Ok(self.get::<UpdateService>(&path).await?.0)
    }

    pub(super) async fn do_update_capabilities(&self) -> Result<UpdateCapabilities> {
        let svc = self.update_service().await?;
        let simple = svc.actions.get("#UpdateService.SimpleUpdate");
        Ok(UpdateCapabilities {
            simple_update: simple
                .and_then(|a| a.get("target"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            transfer_protocols: simple
                .and_then(|a| a.get("TransferProtocol@Redfish.AllowableValues"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            multipart_push_uri: svc.multipart,
            http_push_uri: svc.http_push,
        })
    }

    pub(super) async fn do_firmware_inventory(&self) -> Result<Vec<FirmwareItem>> {
        let svc = match self.update_service().await {
            Ok(s) => s,
            Err(BmcError::Unsupported(_)) => UpdateService::default(),
            Err(e) => return Err(e),
        };
        let Some(inv) = svc.inventory else {
            return self.inventory_from_system().await;
        };
        let coll = match self.get::<super::Collection>(&inv.id).await {
            Ok((c, _)) => c,
            // Advertised and not served (sushy-tools): the system's own BiosVersion.
            Err(BmcError::Rejected(m)) if m.starts_with("HTTP 404") => {
                return self.inventory_from_system().await;
            }
            Err(e) => return Err(e),
        };
        let mut items = Vec::new();
        for m in coll.members.into_iter().take(MAX_ITEMS) {
            let (it, _) = self.get::<Item>(&m.id).await?;
            let id = it.id.clone().unwrap_or_else(|| {
                m.id.rsplit('/')
                    .find(|s| !s.is_empty())
                    .unwrap_or_default()
                    .to_owned()
            });
            let name = it.name.clone().unwrap_or_else(|| id.clone());
            let related: Vec<String> = it.related_item.iter().map(|l| l.id.clone()).collect();
            items.push(FirmwareItem {
                kind: classify(&id, &name, &related),
                uri: it.odata_id.unwrap_or(m.id),
                id,
                name,
                version: it.version.filter(|v| !v.trim().is_empty()),
                updateable: it.updateable.unwrap_or(false),
                software_id: it.software_id,
            });
        }
        Ok(items)
    }

    async fn inventory_from_system(&self) -> Result<Vec<FirmwareItem>> {
        let path = self.system_path().await?;
        let (s, _) = self.get::<Value>(&path).await?;
        let version = s
            .get("BiosVersion")
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_owned);
        Ok(version
            .map(|v| {
                vec![FirmwareItem {
                    id: "BIOS".into(),
                    uri: path.clone(),
                    name: "BIOS (the system's BiosVersion)".into(),
                    kind: ComponentKind::Bios,
                    version: Some(v),
                    updateable: false,
                    software_id: None,
                }]
            })
            .unwrap_or_default())
    }

    pub(super) async fn do_simple_update(
        &self,
        image_url: &str,
        targets: &[String],
    ) -> Result<UpdateTask> {
        let caps = self.do_update_capabilities().await?;
        let target = caps
            .simple_update
            .ok_or_else(|| BmcError::Unsupported("SimpleUpdate".into()))?;
        let scheme = image_url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_uppercase())
            .unwrap_or_default();
        if !caps.transfer_protocols.is_empty() && !caps.transfer_protocols.contains(&scheme) {
            return Err(BmcError::Unsupported(format!(
                "SimpleUpdate over {scheme} (it allows {})",
                caps.transfer_protocols.join(", ")
            )));
        }
        let mut body = json!({ "ImageURI": image_url });
        if !targets.is_empty() {
            body["Targets"] = json!(targets);
        }
        let (status, headers, resp) = self.call(Method::POST, &target, Some(&body), None).await?;
        task_of(status, &headers, &resp)
    }

    pub(super) async fn do_multipart_update(
        &self,
        image: Vec<u8>,
        targets: &[String],
    ) -> Result<UpdateTask> {
        if image.len() > MAX_IMAGE {
            return Err(BmcError::Rejected(format!(
                "the image is {} bytes; plinth pushes at most {MAX_IMAGE}",
                image.len()
            )));
        }
        let caps = self.do_update_capabilities().await?;
        let (uri, content_type, body) = if let Some(uri) = caps.multipart_push_uri {
            let boundary = format!("plinth-{:032x}", rand::random::<u128>());
            let params = json!({ "Targets": targets });
            let mut body = Vec::with_capacity(image.len() + 512);
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"UpdateParameters\"\r\nContent-Type: application/json\r\n\r\n{params}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"UpdateFile\"; filename=\"image.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(&image);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            (
                uri,
                format!("multipart/form-data; boundary={boundary}"),
                body,
            )
        } else if let Some(uri) = caps.http_push_uri {
            (uri, "application/octet-stream".to_owned(), image)
        } else {
            return Err(BmcError::Unsupported("an HTTP push of firmware".into()));
        };
        let (status, headers, resp) = self.push(&uri, &content_type, body).await?;
        task_of(status, &headers, &resp)
    }

    /// One POST of a raw body, authenticated like [`Redfish::call`] (a 401 on a session logs
    /// in again once), with a longer timeout: an image takes a while to send.
    async fn push(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
        let body = bytes::Bytes::from(body);
        for attempt in 0..2 {
            let auth = {
                let mut a = self.auth.lock().await;
                if matches!(*a, Auth::Unknown) || attempt == 1 {
                    *a = self.login().await?;
                }
                a.clone()
            };
            let mut req = self
                .http
                .post(self.url(path)?)
                .timeout(self.cfg.timeout.saturating_mul(20))
                .header("content-type", content_type)
                .body(body.clone());
            req = match &auth {
                Auth::Session(t, _) => req.header("X-Auth-Token", t),
                _ => req.basic_auth(&self.cfg.username, Some(&self.cfg.password)),
            };
            let resp = req.send().await.map_err(transport_error)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = read_limited(resp).await?;
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == StatusCode::UNAUTHORIZED
                && attempt == 0
                && matches!(auth, Auth::Session(..))
            {
                continue;
            }
            return Ok((status, headers, value));
        }
        Err(BmcError::Auth)
    }

    pub(super) async fn do_task_status(&self, task: &UpdateTask) -> Result<TaskStatus> {
        if task.immediate {
            return Ok(TaskStatus {
                phase: TaskPhase::Completed,
                state: "Completed".into(),
                percent: Some(100),
                messages: Vec::new(),
                needs_reboot: false,
            });
        }
        if let Some(t) = &task.task {
            let (v, _) = self.get::<Value>(t).await?;
            return Ok(parse_task(&v));
        }
        let Some(m) = &task.monitor else {
            return Err(BmcError::Protocol(
                "an update task with nowhere to ask".into(),
            ));
        };
        let (status, _, body) = self.call(Method::GET, m, None, None).await?;
        match status.as_u16() {
            202 => {
                let mut t = parse_task(&body);
                t.phase = TaskPhase::Running;
                Ok(t)
            }
            200..=299 if body.get("TaskState").is_some() => Ok(parse_task(&body)),
            200..=299 => Ok(TaskStatus {
                phase: TaskPhase::Completed,
                state: "Completed".into(),
                percent: Some(100),
                messages: Vec::new(),
                needs_reboot: false,
            }),
            _ => Err(status_error(status, &body)),
        }
    }
}

/// The task an update request started, from its answer.
fn task_of(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
) -> Result<UpdateTask> {
    if !status.is_success() {
        return Err(status_error(status, body));
    }
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body_task = body
        .get("@odata.id")
        .and_then(Value::as_str)
        .filter(|_| body.get("TaskState").is_some())
        .map(str::to_owned);
    let (monitor, task) = match location {
        // A Location naming a Task resource (sushy-tools, some vendors) is the task itself.
        Some(l) if l.contains("/Tasks/") && body_task.is_none() => (None, Some(l)),
        Some(l) => (Some(l), body_task),
        None => (None, body_task),
    };
    let immediate = monitor.is_none() && task.is_none();
    if immediate && status == StatusCode::ACCEPTED {
        return Err(BmcError::Protocol(
            "the BMC accepted the update without saying where to follow it".into(),
        ));
    }
    Ok(UpdateTask {
        monitor,
        task,
        immediate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_to_an_update_become_tasks() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("location", "/redfish/v1/TaskMonitors/7".parse().unwrap());
        let t = task_of(
            StatusCode::ACCEPTED,
            &h,
            &json!({ "@odata.id": "/redfish/v1/TaskService/Tasks/7", "TaskState": "New" }),
        )
        .unwrap();
        assert_eq!(t.monitor.as_deref(), Some("/redfish/v1/TaskMonitors/7"));
        assert_eq!(t.task.as_deref(), Some("/redfish/v1/TaskService/Tasks/7"));
        h.insert(
            "location",
            "/redfish/v1/TaskService/Tasks/42".parse().unwrap(),
        );
        let t = task_of(StatusCode::NO_CONTENT, &h, &Value::Null).unwrap();
        assert_eq!(t.task.as_deref(), Some("/redfish/v1/TaskService/Tasks/42"));
        let t = task_of(StatusCode::OK, &Default::default(), &Value::Null).unwrap();
        assert!(t.immediate);
        assert!(task_of(StatusCode::ACCEPTED, &Default::default(), &Value::Null).is_err());
        assert!(matches!(
            task_of(StatusCode::BAD_REQUEST, &Default::default(), &Value::Null),
            Err(BmcError::Rejected(_))
        ));
    }
}
