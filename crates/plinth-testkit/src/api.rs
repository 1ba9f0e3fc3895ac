//! plinth's API in this process (feature `api`): an [`App`] on a fresh [`TestDb`], served over
//! real HTTP on an ephemeral port of 127.0.0.1, with an admin token. What the tests of the API,
//! the typed client and the agent stand on.
//!
//! ```no_run
//! # async fn example() {
//! let api = plinth_testkit::api::TestApi::start().await;
//! let racks = api.client().list_racks().await.unwrap();
//! # }
//! ```

use std::net::SocketAddr;

use plinth_api::ServeOptions;
use plinth_core::{App, Principal};
use plinth_types::Role;

use crate::TestDb;

/// Serves `app` with `opts` on an ephemeral port of 127.0.0.1 (for as long as the test's
/// runtime lives); its address.
pub async fn listen(app: &App, opts: ServeOptions) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("a bound listener's address");
    tokio::spawn(plinth_api::serve_with(
        listener,
        app.clone(),
        opts,
        std::future::pending(),
    ));
    addr
}

/// A new API token's secret: `name` with `role`, made by the system.
pub async fn token(app: &App, name: &str, role: Role) -> String {
    app.create_token(&Principal::system(), name, role)
        .await
        .unwrap_or_else(|e| panic!("creating token {name}: {e:?}"))
        .secret
}

/// An API server on its own database, with an admin token.
pub struct TestApi {
    pub db: TestDb,
    pub app: App,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    /// The secret of an admin token named `root`.
    pub admin: String,
}

impl TestApi {
    /// A fresh database and an [`App`] on it, served with the default options.
    pub async fn start() -> TestApi {
        TestApi::start_with(|app| app).await
    }

    /// The same, with the [`App`] shaped by `shape` first (`with_boot`, ...).
    pub async fn start_with(shape: impl FnOnce(App) -> App) -> TestApi {
        let db = TestDb::new().await.expect("a test database");
        let app = shape(db.app());
        TestApi::serve(db, app, ServeOptions::default()).await
    }

    /// `app` (on `db`) served with `opts`, and an admin token.
    pub async fn serve(db: TestDb, app: App, opts: ServeOptions) -> TestApi {
        let addr = listen(&app, opts).await;
        let admin = token(&app, "root", Role::Admin).await;
        TestApi {
            db,
            app,
            addr,
            base: format!("http://{addr}"),
            admin,
        }
    }

    /// `base` followed by `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A new token's secret.
    pub async fn token(&self, name: &str, role: Role) -> String {
        token(&self.app, name, role).await
    }

    /// The typed client with the admin token.
    pub fn client(&self) -> plinth_client::Client {
        plinth_client::Client::new(self.base.as_str(), self.admin.as_str())
            .expect("a client for the test API")
    }
}
