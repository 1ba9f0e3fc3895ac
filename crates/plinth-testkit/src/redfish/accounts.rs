//! The emulator's AccountService (issue 21, rotation): two accounts, the one plinth logs in
//! with (the emulator's user) and an `operator` that must never be touched; a password policy
//! of 8 to 20 characters; PATCH of an account's `Password` only with its current ETag in
//! `If-Match` (428 without, 412 stale); a changed password ends every session of its account,
//! as many BMCs do. Passwords are never in a GET (Redfish answers them as null).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{RedfishEmulator, Shared, error, gate};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 20;
/// The other account's name and password.
pub const OPERATOR: (&str, &str) = ("operator", "operator-pw");

/// The accounts' state besides the main user's name and password (in the emulator's state).
#[derive(Debug, Default)]
pub(super) struct AccountsState {
    /// ETag versions of accounts 1 (operator) and 2 (the main user).
    versions: [u64; 2],
    /// Password changes accepted, per account id.
    changes: Vec<u32>,
    operator_password: Option<String>,
    /// Sessions ended by a password change.
    pub(super) sessions_ended: u32,
}

pub(super) fn routes(r: Router<Shared>) -> Router<Shared> {
    r.route("/redfish/v1/AccountService", get(service))
        .route("/redfish/v1/AccountService/Accounts", get(accounts))
        .route(
            "/redfish/v1/AccountService/Accounts/{id}",
            get(account).patch(patch_account),
        )
}

impl RedfishEmulator {
    /// The main account's password now (the test's view of the BMC).
    pub fn password(&self) -> String {
        self.state.lock().expect("emulator state").password.clone()
    }

    /// The operator account's password now (it must never change).
    pub fn operator_password(&self) -> String {
        let b = self.state.lock().expect("emulator state");
        b.accounts
            .operator_password
            .clone()
            .unwrap_or_else(|| OPERATOR.1.to_owned())
    }

    /// Password changes the BMC accepted, over every account.
    pub fn password_changes(&self) -> u32 {
        let b = self.state.lock().expect("emulator state");
        b.accounts.changes.iter().sum()
    }

    /// Sessions the BMC ended because their account's password changed.
    pub fn sessions_ended(&self) -> u32 {
        self.state
            .lock()
            .expect("emulator state")
            .accounts
            .sessions_ended
    }

    /// Sets the main account's password behind plinth's back (a technician at the console).
    pub fn set_password(&self, password: &str) {
        self.state.lock().expect("emulator state").password = password.to_owned();
    }
}

fn etag(versions: &[u64; 2], i: usize) -> String {
    format!("W/\"acct-{}-{}\"", i + 1, versions[i] + 1)
}

async fn service(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET /redfish/v1/AccountService", true).await {
        return r;
    }
    axum::Json(json!({
        "@odata.id": "/redfish/v1/AccountService",
        "Id": "AccountService",
        "MinPasswordLength": MIN_PASSWORD,
        "MaxPasswordLength": MAX_PASSWORD,
        "Accounts": { "@odata.id": "/redfish/v1/AccountService/Accounts" }
    }))
    .into_response()
}

async fn accounts(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &h, "GET /redfish/v1/AccountService/Accounts", true).await {
        return r;
    }
    axum::Json(json!({
        "Members": [
            { "@odata.id": "/redfish/v1/AccountService/Accounts/1" },
            { "@odata.id": "/redfish/v1/AccountService/Accounts/2" }
        ],
        "Members@odata.count": 2
    }))
    .into_response()
}

fn index(id: &str) -> Option<usize> {
    match id {
        "1" => Some(0),
        "2" => Some(1),
        _ => None,
    }
}

async fn account(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = gate(&s, &h, "GET account", true).await {
        return r;
    }
    let Some(i) = index(&id) else {
        return error(StatusCode::NOT_FOUND, "No such account.");
    };
    let b = s.lock().expect("emulator state");
    let name = if i == 0 { OPERATOR.0 } else { b.user.as_str() };
    let tag = etag(&b.accounts.versions, i);
    (
        [("etag", tag.clone())],
        axum::Json(json!({
            "@odata.id": format!("/redfish/v1/AccountService/Accounts/{id}"),
            "@odata.etag": tag,
            "Id": id, "UserName": name, "RoleId": if i == 0 { "Operator" } else { "Administrator" },
            "Enabled": true, "Locked": false, "Password": Value::Null
        })),
    )
        .into_response()
}

async fn patch_account(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Some(r) = gate(&s, &h, "PATCH account", true).await {
        return r;
    }
    let Some(i) = index(&id) else {
        return error(StatusCode::NOT_FOUND, "No such account.");
    };
    let mut b = s.lock().expect("emulator state");
    match h.get("if-match").and_then(|v| v.to_str().ok()) {
        None => return error(StatusCode::PRECONDITION_REQUIRED, "If-Match is required."),
        Some(e) if e != etag(&b.accounts.versions, i) => {
            return error(StatusCode::PRECONDITION_FAILED, "The ETag does not match.");
        }
        Some(_) => {}
    }
    let Some(pw) = body.get("Password").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "Only Password can be changed.");
    };
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&pw.len()) {
        return error(
            StatusCode::BAD_REQUEST,
            "The password does not meet the password policy.",
        );
    }
    if i == 0 {
        b.accounts.operator_password = Some(pw.to_owned());
    } else {
        b.password = pw.to_owned();
        // Every session of this account ends (the emulator's sessions are all its own).
        let ended = b.tokens.len() as u32;
        b.tokens.clear();
        b.sessions.clear();
        b.accounts.sessions_ended += ended;
    }
    b.accounts.versions[i] += 1;
    if b.accounts.changes.len() < 2 {
        b.accounts.changes.resize(2, 0);
    }
    b.accounts.changes[i] += 1;
    StatusCode::NO_CONTENT.into_response()
}
