//! A headless Chromium driven over W3C WebDriver, for browser tests of plinth's web UI.
//!
//! [`Browser::start`] runs `chromedriver` as a child process (on a port it picks itself, its
//! output in a log file) and opens a session on a headless Chromium with a fresh profile,
//! `HOME` and viewport, all in a temp dir. The client is small, blocking and speaks plain
//! HTTP/JSON to chromedriver (ureq): no async runtime needed, so tests are plain `#[test]`s.
//!
//! Dropping the [`Browser`] (also while a test panics) deletes the session, kills
//! chromedriver's process group and any process still using the temp dir (Chromium's
//! crashpad handlers detach from the group), and removes the temp dir.
//!
//! Needs the packages `chromium` and `chromium-driver` (Debian: `/usr/bin/chromium`,
//! `/usr/bin/chromedriver`); `PLINTH_CHROMIUM` and `PLINTH_CHROMEDRIVER` name others.
//! Chromium runs with `--no-sandbox` since the tests run as root.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use plinth_testkit::browser::Browser;
//!
//! let b = Browser::builder().size(820, 1180).start()?;
//! b.goto("http://127.0.0.1:8080/")?;
//! b.find("input[name=q]")?.send_keys("rack-1")?;
//! b.find("button")?.click()?;
//! assert_eq!(b.wait_for("h1", Duration::from_secs(5))?.text()?, "rack-1");
//! assert_eq!(b.console_errors()?, Vec::<String>::new());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

/// The key of a web element reference in WebDriver JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The viewport [`Browser::start`] gives: 1280x900 CSS pixels.
pub const DEFAULT_SIZE: (u32, u32) = (1280, 900);

const INSTALL_HINT: &str = "apt-get install chromium chromium-driver (or scripts/ensure-packages.sh chromium chromium-driver)";

/// How often [`Browser::wait_for`] and [`Browser::wait_until`] poll.
const POLL: Duration = Duration::from_millis(50);

/// Sets up a [`Browser`]: viewport, binaries, extra Chromium flags, timeouts.
#[derive(Debug, Clone)]
pub struct BrowserBuilder {
    size: (u32, u32),
    chromium: PathBuf,
    chromedriver: PathBuf,
    args: Vec<String>,
    start_timeout: Duration,
    page_load_timeout: Duration,
}

impl Default for BrowserBuilder {
    fn default() -> Self {
        let env_or = |var: &str, default: &str| {
            std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        BrowserBuilder {
            size: DEFAULT_SIZE,
            chromium: env_or("PLINTH_CHROMIUM", "/usr/bin/chromium"),
            chromedriver: env_or("PLINTH_CHROMEDRIVER", "/usr/bin/chromedriver"),
            args: Vec::new(),
            start_timeout: Duration::from_secs(30),
            page_load_timeout: Duration::from_secs(30),
        }
    }
}

impl BrowserBuilder {
    /// The viewport (`window.innerWidth` x `window.innerHeight`) in CSS pixels, at a device
    /// pixel ratio of 1, so screenshots are `width` x `height` pixels too.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// The Chromium binary (default `$PLINTH_CHROMIUM` or `/usr/bin/chromium`).
    pub fn chromium(mut self, path: impl Into<PathBuf>) -> Self {
        self.chromium = path.into();
        self
    }

    /// The chromedriver binary (default `$PLINTH_CHROMEDRIVER` or `/usr/bin/chromedriver`).
    pub fn chromedriver(mut self, path: impl Into<PathBuf>) -> Self {
        self.chromedriver = path.into();
        self
    }

    /// One more Chromium command-line flag, e.g. `--force-prefers-reduced-motion`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// How long chromedriver and the session get to come up (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long a navigation may take before the command fails (default 30 s).
    pub fn page_load_timeout(mut self, timeout: Duration) -> Self {
        self.page_load_timeout = timeout;
        self
    }

    /// Starts chromedriver and opens a session on a headless Chromium.
    pub fn start(self) -> anyhow::Result<Browser> {
        let chromedriver = installed(&self.chromedriver, "chromedriver")?;
        let chromium = installed(&self.chromium, "chromium")?;
        let deadline = Instant::now() + self.start_timeout;
        let driver = Driver::spawn(&chromedriver, deadline)?;
        let profile = driver.dir.path().join("profile");
        let (w, h) = self.size;
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={w},{h}"),
            "--force-device-scale-factor=1".to_owned(),
            "--lang=en-US".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--password-store=basic".to_owned(),
        ];
        args.extend(self.args.iter().cloned());
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"implicit": 0, "pageLoad": ms(self.page_load_timeout), "script": 30_000},
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let left = deadline.saturating_duration_since(Instant::now());
        let created = request(
            &agent(left.max(Duration::from_secs(1))),
            "POST",
            &format!("{}/session", driver.url),
            Some(&caps),
        )
        .map_err(|e| anyhow!("{e:#}\nchromedriver log:\n{}", driver.log()))
        .with_context(|| {
            format!(
                "creating a WebDriver session (starting {})",
                chromium.display()
            )
        })?;
        let session = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("new session without a sessionId: {created}"))?
            .to_owned();
        let browser = Browser {
            agent: agent(self.page_load_timeout + Duration::from_secs(30)),
            base: format!("{}/session/{session}", driver.url),
            driver,
        };
        browser.set_viewport(w, h)?;
        Ok(browser)
    }
}

/// A headless Chromium with one WebDriver session; its commands block until chromedriver
/// answers. See the [module docs](self).
pub struct Browser {
    agent: ureq::Agent,
    /// `http://127.0.0.1:PORT/session/ID`.
    base: String,
    driver: Driver,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("session", &self.base)
            .field("dir", &self.driver.dir.path())
            .finish()
    }
}

impl Browser {
    /// A browser with the [default viewport](DEFAULT_SIZE).
    pub fn start() -> anyhow::Result<Browser> {
        Browser::builder().start()
    }

    /// A browser with a `width` x `height` viewport, e.g. 820x1180 for a tablet.
    pub fn with_size(width: u32, height: u32) -> anyhow::Result<Browser> {
        Browser::builder().size(width, height).start()
    }

    /// A builder, for more settings than the size.
    pub fn builder() -> BrowserBuilder {
        BrowserBuilder::default()
    }

    /// The chromedriver (and Chromium) log file, for a failing test's message.
    pub fn log_path(&self) -> PathBuf {
        self.driver.log_path()
    }

    /// Navigates to `url` and waits for the page to load. Fails when Chromium shows its
    /// network error page instead (e.g. `ERR_CONNECTION_REFUSED`), which WebDriver itself
    /// counts as a success. An HTTP error status is a page like any other.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "url", Some(json!({ "url": url })))?;
        let error_page = self.execute(
            "return document.URL.startsWith('chrome-error://') ? document.body.innerText : null",
            &[],
        )?;
        if let Some(text) = error_page.as_str() {
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            bail!("could not load {url}: {text}");
        }
        Ok(())
    }

    /// The URL of the current page.
    pub fn current_url(&self) -> anyhow::Result<String> {
        string(self.cmd("GET", "url", None)?)
    }

    /// The current page's `<title>`.
    pub fn title(&self) -> anyhow::Result<String> {
        string(self.cmd("GET", "title", None)?)
    }

    /// The current DOM serialized as HTML (not the bytes the server sent).
    pub fn source(&self) -> anyhow::Result<String> {
        string(self.cmd("GET", "source", None)?)
    }

    /// Goes back in history.
    pub fn back(&self) -> anyhow::Result<()> {
        self.cmd("POST", "back", Some(json!({}))).map(drop)
    }

    /// Goes forward in history.
    pub fn forward(&self) -> anyhow::Result<()> {
        self.cmd("POST", "forward", Some(json!({}))).map(drop)
    }

    /// Reloads the current page.
    pub fn refresh(&self) -> anyhow::Result<()> {
        self.cmd("POST", "refresh", Some(json!({}))).map(drop)
    }

    /// Runs `js` as the body of a function called with `args` (`arguments[0]`, ...) and
    /// returns what it returns. [`Element::to_arg`] passes an element; elements in the result
    /// come back as `{"element-6066-...": id}`.
    pub fn execute(&self, js: &str, args: &[Value]) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "execute/sync",
            Some(json!({ "script": js, "args": args })),
        )
    }

    /// A PNG of the viewport.
    pub fn screenshot_png(&self) -> anyhow::Result<Vec<u8>> {
        let b64 = string(self.cmd("GET", "screenshot", None)?)?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("decoding the screenshot's base64")
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.screenshot_png()?)
            .with_context(|| format!("writing the screenshot to {}", path.display()))
    }

    /// The first element matching the CSS selector `css`, now (no waiting).
    pub fn find(&self, css: &str) -> anyhow::Result<Element<'_>> {
        let v = self.cmd("POST", "element", Some(by_css(css)))?;
        Element::from_value(self, &v)
    }

    /// All elements matching `css`, in document order (none is not an error).
    pub fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element<'_>>> {
        let v = self.cmd("POST", "elements", Some(by_css(css)))?;
        elements(self, &v)
    }

    /// Polls for an element matching `css` until `timeout`.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<Element<'_>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css) {
                Ok(e) => return Ok(e),
                Err(e)
                    if Instant::now() >= deadline
                        || e.downcast_ref::<WebDriverError>()
                            .is_some_and(|w| w.error == "invalid selector") =>
                {
                    return Err(e.context(format!("no {css:?} within {timeout:?}")));
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Polls `check` until it returns `Ok(true)` or `timeout` passes. An `Err` counts as "not
    /// yet" (an element may go stale while a page loads); the last one is in the timeout error.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Browser) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => None,
                Err(e) => Some(e),
            };
            if Instant::now() >= deadline {
                return Err(match last {
                    Some(e) => e.context(format!("condition not met within {timeout:?}")),
                    None => anyhow!("condition not met within {timeout:?}"),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The cookies visible to the current page (HttpOnly ones too).
    pub fn cookies(&self) -> anyhow::Result<Vec<Cookie>> {
        let v = self.cmd("GET", "cookie", None)?;
        serde_json::from_value(v.clone()).with_context(|| format!("cookies: {v}"))
    }

    /// The cookie `name` of the current page, if any.
    pub fn cookie(&self, name: &str) -> anyhow::Result<Option<Cookie>> {
        Ok(self.cookies()?.into_iter().find(|c| c.name == name))
    }

    /// Deletes all cookies of the current page's domain.
    pub fn delete_cookies(&self) -> anyhow::Result<()> {
        self.cmd("DELETE", "cookie", None).map(drop)
    }

    /// The browser console's entries since the last call (of this or
    /// [`console_errors`](Self::console_errors)): `console.*` calls, uncaught exceptions,
    /// failed resource loads.
    pub fn console_log(&self) -> anyhow::Result<Vec<LogEntry>> {
        let v = self.cmd("POST", "se/log", Some(json!({ "type": "browser" })))?;
        serde_json::from_value(v.clone()).with_context(|| format!("browser log: {v}"))
    }

    /// The messages of the `SEVERE` console entries since the last call (of this or
    /// [`console_log`](Self::console_log)): `console.error`, uncaught exceptions, failed
    /// loads (a 404 included). Assert it is empty to keep the JavaScript console clean.
    pub fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .console_log()?
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .map(|e| e.message)
            .collect())
    }

    /// Resizes the window so the viewport is `width` x `height` CSS pixels (the window is
    /// larger by the browser's frame, which headless Chromium has too).
    pub fn set_viewport(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let inner = || -> anyhow::Result<(i64, i64)> {
            let v = self.execute("return [window.innerWidth, window.innerHeight]", &[])?;
            match (v[0].as_i64(), v[1].as_i64()) {
                (Some(w), Some(h)) => Ok((w, h)),
                _ => bail!("window.innerWidth/innerHeight: {v}"),
            }
        };
        let (want_w, want_h) = (i64::from(width), i64::from(height));
        for _ in 0..3 {
            let (w, h) = inner()?;
            if (w, h) == (want_w, want_h) {
                return Ok(());
            }
            let rect = self.cmd("GET", "window/rect", None)?;
            let (Some(outer_w), Some(outer_h)) = (rect["width"].as_i64(), rect["height"].as_i64())
            else {
                bail!("window rect: {rect}");
            };
            let body = json!({
                "width": outer_w + want_w - w,
                "height": outer_h + want_h - h,
            });
            self.cmd("POST", "window/rect", Some(body))?;
        }
        let (w, h) = inner()?;
        if (w, h) != (want_w, want_h) {
            bail!("viewport is {w}x{h}, not {width}x{height}");
        }
        Ok(())
    }

    /// One WebDriver command of this session: `path` is relative to `/session/{id}`.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        };
        request(&self.agent, method, &url, body.as_ref()).map_err(|e| {
            if e.is::<WebDriverError>() {
                e
            } else {
                // No answer: chromedriver may have died, and its log may say why.
                let log = self.driver.log_path();
                e.context(format!("chromedriver log: {}", log.display()))
            }
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromedriver quits Chromium when its session goes; the Driver's drop (after this)
        // kills whatever is left.
        let quick = agent(Duration::from_secs(10));
        if let Err(e) = request(&quick, "DELETE", &self.base, None) {
            eprintln!("plinth-testkit browser: deleting the session: {e:#}");
        }
    }
}

/// An element of the page, found by [`Browser::find`] and friends. It goes stale (its
/// commands fail with "stale element reference") when the page it is on goes away.
#[derive(Clone)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Element").field(&self.id).finish()
    }
}

impl<'b> Element<'b> {
    fn from_value(browser: &'b Browser, v: &Value) -> anyhow::Result<Element<'b>> {
        let id = v[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| anyhow!("not an element reference: {v}"))?;
        Ok(Element {
            browser,
            id: id.to_owned(),
        })
    }

    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let path = if what.is_empty() {
            format!("element/{}", self.id)
        } else {
            format!("element/{}/{what}", self.id)
        };
        self.browser.cmd(method, &path, body)
    }

    /// The WebDriver element id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This element as an argument of [`Browser::execute`].
    pub fn to_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// Scrolls the element into view and clicks its centre (fails if something covers it).
    pub fn click(&self) -> anyhow::Result<()> {
        self.cmd("POST", "click", Some(json!({}))).map(drop)
    }

    /// Focuses the element and types `text` (appending to what is there).
    pub fn send_keys(&self, text: &str) -> anyhow::Result<()> {
        self.cmd("POST", "value", Some(json!({ "text": text })))
            .map(drop)
    }

    /// Empties an input or textarea.
    pub fn clear(&self) -> anyhow::Result<()> {
        self.cmd("POST", "clear", Some(json!({}))).map(drop)
    }

    /// The rendered text (as `innerText`: hidden parts left out).
    pub fn text(&self) -> anyhow::Result<String> {
        string(self.cmd("GET", "text", None)?)
    }

    /// The HTML attribute `name`, `None` when absent.
    pub fn attr(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self.cmd("GET", &format!("attribute/{name}"), None)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            v => Ok(Some(v.to_string())),
        }
    }

    /// The DOM property `name` (e.g. `value`, `checked`), `Null` when undefined.
    pub fn prop(&self, name: &str) -> anyhow::Result<Value> {
        self.cmd("GET", &format!("property/{name}"), None)
    }

    /// Whether the element is rendered visibly.
    pub fn is_displayed(&self) -> anyhow::Result<bool> {
        boolean(self.cmd("GET", "displayed", None)?)
    }

    /// Whether a form control is enabled.
    pub fn is_enabled(&self) -> anyhow::Result<bool> {
        boolean(self.cmd("GET", "enabled", None)?)
    }

    /// The lower-case tag name, e.g. `"input"`.
    pub fn tag_name(&self) -> anyhow::Result<String> {
        string(self.cmd("GET", "name", None)?)
    }

    /// The first descendant matching `css`.
    pub fn find(&self, css: &str) -> anyhow::Result<Element<'b>> {
        let v = self.cmd("POST", "element", Some(by_css(css)))?;
        Element::from_value(self.browser, &v)
    }

    /// All descendants matching `css`.
    pub fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element<'b>>> {
        let v = self.cmd("POST", "elements", Some(by_css(css)))?;
        elements(self.browser, &v)
    }
}

/// An error WebDriver answered a command with, e.g. `no such element` or `stale element
/// reference`; reach it with `anyhow::Error::downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebDriverError {
    /// The command: method, path below the session, and the JSON body (shortened).
    pub command: String,
    /// The W3C error code, e.g. `"no such element"`.
    pub error: String,
    /// Chromedriver's message.
    pub message: String,
}

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WebDriver {}: {}: {}",
            self.command, self.error, self.message
        )
    }
}

impl std::error::Error for WebDriverError {}

/// A cookie as WebDriver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    /// The cookie's name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// The `Path` it applies to.
    pub path: Option<String>,
    /// The domain it belongs to (`.example.com` when set with `Domain=`).
    pub domain: Option<String>,
    /// `Secure`: sent over HTTPS only.
    #[serde(default)]
    pub secure: bool,
    /// `HttpOnly`: hidden from `document.cookie`.
    #[serde(default)]
    pub http_only: bool,
    /// `SameSite`: `"Strict"`, `"Lax"` or `"None"`.
    pub same_site: Option<String>,
    /// Seconds since the epoch; `None` for a session cookie.
    pub expiry: Option<u64>,
}

/// One entry of the browser console (see [`Browser::console_log`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LogEntry {
    /// `"SEVERE"`, `"WARNING"`, `"INFO"`, `"DEBUG"`.
    pub level: String,
    /// Source URL, line:column, and the text.
    pub message: String,
    /// `"console-api"`, `"javascript"`, `"network"`, ...
    #[serde(default)]
    pub source: Option<String>,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// The chromedriver child process and the temp dir holding its log, Chromium's profile and
/// `HOME`. Dropping it kills them all and removes the dir.
struct Driver {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver on a port it picks (`--port=0`, so no race for a free port) and
    /// waits until `/status` says it is ready.
    fn spawn(chromedriver: &Path, deadline: Instant) -> anyhow::Result<Driver> {
        let dir = tempfile::Builder::new()
            .prefix("plinth-browser-")
            .tempdir()
            .context("creating the browser's temp dir")?;
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        let log = std::fs::File::create(dir.path().join("chromedriver.log"))?;
        let child = Command::new(chromedriver)
            .arg("--port=0")
            // Chromium inherits this environment: keep its crash reports, caches and config
            // out of the real home.
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group, which Chromium's processes join: one kill gets them all.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let mut driver = Driver {
            child,
            url: String::new(),
            dir,
        };
        let status = agent(Duration::from_secs(5));
        loop {
            if let Some(st) = driver.child.try_wait()? {
                bail!("chromedriver exited ({st}):\n{}", driver.log());
            }
            if driver.url.is_empty()
                && let Some(port) = driver.log().lines().find_map(|l| {
                    l.strip_prefix("ChromeDriver was started successfully on port ")
                        .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
                })
            {
                driver.url = format!("http://127.0.0.1:{port}");
            }
            if !driver.url.is_empty()
                && let Ok(v) = request(&status, "GET", &format!("{}/status", driver.url), None)
                && v["ready"] == true
            {
                return Ok(driver);
            }
            if Instant::now() >= deadline {
                bail!("chromedriver not ready in time:\n{}", driver.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("chromedriver.log")
    }

    /// The log's last 8 KiB.
    fn log(&self) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            f.read_to_end(&mut buf).ok();
        }
        let start = buf.len().saturating_sub(8192);
        String::from_utf8_lossy(&buf[start..]).into_owned()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = self.child.id();
        kill(&[format!("-{pgid}")]);
        self.child.kill().ok();
        self.child.wait().ok();
        // Stragglers outside the group (crashpad handlers start their own sessions): anything
        // whose command line names our temp dir.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_mentioning(self.dir.path());
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("plinth-testkit browser: processes left running: {left:?}");
                break;
            }
            kill(&left.iter().map(u32::to_string).collect::<Vec<_>>());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGKILLs `targets` (pids, or `-pgid` for a process group) with kill(1).
fn kill(targets: &[String]) {
    if targets.is_empty() {
        return;
    }
    Command::new("kill")
        .args(["-s", "KILL", "--"])
        .args(targets)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok();
}

/// Live processes (zombies have no command line) whose command line contains `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// `path` if it exists, else an error saying what to install.
fn installed(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        bail!("{what} not found at {}: {INSTALL_HINT}", path.display())
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(timeout)
        .build()
}

/// One WebDriver request: the response's `value`, or an error quoting the command and
/// WebDriver's `error` and `message`.
fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let command = || {
        // "http://host:port/session/ID/element" -> "/element": the session id is noise.
        let path = url.splitn(4, '/').nth(3).unwrap_or("");
        let path = match path.strip_prefix("session/") {
            Some(rest) => rest.split_once('/').map_or("session", |(_, p)| p),
            None => path,
        };
        let mut s = format!("{method} /{path}");
        // A new session's capabilities are long and said elsewhere.
        if let Some(b) = body.filter(|_| path != "session") {
            let b = b.to_string();
            if b != "{}" {
                s.push(' ');
                s.extend(b.chars().take(300));
                if b.chars().count() > 300 {
                    s.push('…');
                }
            }
        }
        s
    };
    let req = agent.request(method, url);
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let (status, res) = match res {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => return Err(anyhow!("WebDriver {}: {e}", command())),
    };
    let text = res
        .into_string()
        .with_context(|| format!("WebDriver {}: reading the response", command()))?;
    let json: Value = serde_json::from_str(&text).map_err(|_| {
        anyhow!(
            "WebDriver {}: HTTP {status}, not JSON: {}",
            command(),
            text.chars().take(500).collect::<String>()
        )
    })?;
    let value = json.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(WebDriverError {
            command: command(),
            error: error.to_owned(),
            message: value["message"].as_str().unwrap_or("").trim().to_owned(),
        }
        .into());
    }
    if status >= 400 {
        bail!("WebDriver {}: HTTP {status}: {text}", command());
    }
    Ok(value)
}

fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

fn elements<'b>(browser: &'b Browser, v: &Value) -> anyhow::Result<Vec<Element<'b>>> {
    v.as_array()
        .ok_or_else(|| anyhow!("not a list of elements: {v}"))?
        .iter()
        .map(|e| Element::from_value(browser, e))
        .collect()
}

fn string(v: Value) -> anyhow::Result<String> {
    match v {
        Value::String(s) => Ok(s),
        v => bail!("expected a string from WebDriver, got {v}"),
    }
}

fn boolean(v: Value) -> anyhow::Result<bool> {
    v.as_bool()
        .ok_or_else(|| anyhow!("expected a boolean from WebDriver, got {v}"))
}
