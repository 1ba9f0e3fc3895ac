//! plinth-bench-ui: the web UI's pages measured over HTTP as a browser asks for them (a
//! session cookie, one request at a time), and the JSON API's list page as the peer, in the
//! same run. Run by `scripts/bench.sh` against its 10,000-machine inventory.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    api_url: String,
    #[arg(long)]
    user: String,
    #[arg(long, env = "PLINTH_UI_PASSWORD")]
    password: String,
    /// An API token, for the peer (the JSON list).
    #[arg(long, env = "PLINTH_TOKEN")]
    token: String,
    /// Sequential requests per page.
    #[arg(long, default_value_t = 200)]
    samples: usize,
}

fn cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter(|kv| !kv.ends_with('='))
        .map(str::to_owned)
        .collect()
}

fn hidden(html: &str, name: &str) -> anyhow::Result<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let rest = html.split_once(&marker).context("no CSRF field")?.1;
    Ok(rest.split('"').next().unwrap_or_default().to_owned())
}

struct Sample {
    median: Duration,
    p99: Duration,
    bytes: usize,
}

async fn measure(
    http: &reqwest::Client,
    url: &str,
    auth: (&str, &str),
    samples: usize,
) -> anyhow::Result<Sample> {
    let mut times = Vec::with_capacity(samples);
    let mut bytes = 0;
    for i in 0..samples + 20 {
        let t = Instant::now();
        let resp = http.get(url).header(auth.0, auth.1).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let took = t.elapsed();
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        // The first 20 warm the connection and the server's caches.
        if i >= 20 {
            times.push(took);
        }
        bytes = body.len();
    }
    times.sort();
    let at = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    Ok(Sample {
        median: at(0.5),
        p99: at(0.99),
        bytes,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let base = a.api_url.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // Log in as a browser does.
    let form = http.get(format!("{base}/login")).send().await?;
    let mut jar = cookies(&form);
    let token = hidden(&form.text().await?, "_csrf")?;
    let resp = http
        .post(format!("{base}/login"))
        .header("cookie", jar.join("; "))
        .form(&[
            ("_csrf", token.as_str()),
            ("username", &a.user),
            ("password", &a.password),
            ("next", "/machines"),
        ])
        .send()
        .await?;
    if resp.status().as_u16() != 303 {
        bail!("login: {}", resp.status());
    }
    jar.extend(cookies(&resp));
    let cookie = jar.join("; ");
    let auth = ("cookie", cookie.as_str());

    let first = http
        .get(format!("{base}/machines"))
        .header(auth.0, auth.1)
        .send()
        .await?
        .text()
        .await?;
    let id = first
        .split_once("data-id=\"")
        .and_then(|(_, r)| r.split('"').next())
        .context("no machine on the first page: seed the inventory first")?
        .to_owned();
    let rack = first
        .split_once("href=\"/racks/")
        .and_then(|(_, r)| r.split('"').next())
        .context("no racked machine on the first page")?
        .to_owned();

    let pages = [
        (
            "machines, first page (50 rows, by hostname)",
            "/machines".to_owned(),
        ),
        (
            "machines, page 100 by rack",
            "/machines?sort=rack&page=100".to_owned(),
        ),
        (
            "machines, search by serial",
            "/machines?q=SN004242".to_owned(),
        ),
        (
            "machines, search by MAC",
            "/machines?q=02:00:00:00:10:92".to_owned(),
        ),
        (
            "machines, state + tag + power filters",
            "/machines?state=ready&tag=ssd&power=unknown&page=3".to_owned(),
        ),
        ("one rack's elevation", format!("/racks/{rack}")),
        ("racks overview (250 racks as cards)", "/racks".to_owned()),
        ("machine page", format!("/machines/{id}")),
    ];
    println!("| page (HTML, one browser session) | median | p99 | size |");
    println!("|---|---|---|---|");
    for (name, path) in &pages {
        let s = measure(&http, &format!("{base}{path}"), auth, a.samples).await?;
        println!(
            "| {name}: `GET {path}` | {:.2} ms | {:.2} ms | {:.1} KiB |",
            s.median.as_secs_f64() * 1000.0,
            s.p99.as_secs_f64() * 1000.0,
            s.bytes as f64 / 1024.0
        );
    }
    let bearer = format!("Bearer {}", a.token);
    let peer = measure(
        &http,
        &format!("{base}/api/v1/machines?limit=50"),
        ("authorization", &bearer),
        a.samples,
    )
    .await?;
    println!(
        "| peer, same run: JSON `GET /api/v1/machines?limit=50` | {:.2} ms | {:.2} ms | {:.1} KiB |",
        peer.median.as_secs_f64() * 1000.0,
        peer.p99.as_secs_f64() * 1000.0,
        peer.bytes as f64 / 1024.0
    );
    Ok(())
}
