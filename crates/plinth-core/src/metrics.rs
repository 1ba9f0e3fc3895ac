//! Prometheus metrics: what `GET /metrics` renders. The servers that keep counters (DHCP,
//! TFTP, the HTTP listeners) register a [`Source`] with the application's [`Registry`] when
//! they start; the database's counts (machines by state, BMC jobs, BMCs, leases) are read at
//! scrape time. The text exposition format is written here (no client library: a few
//! counters and gauges), with names and labels after Prometheus' conventions: `plinth_`
//! prefix, `_total` for counters, base units.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, RwLock};

use plinth_types::Error;

use plinth_types::Role;

use crate::{App, Principal};

/// The metric kinds the exposition format names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A histogram with fixed upper bounds, updated without locks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative here; summed when rendered).
    buckets: Vec<std::sync::atomic::AtomicU64>,
    count: std::sync::atomic::AtomicU64,
    /// The sum, as the bits of an f64.
    sum: std::sync::atomic::AtomicU64,
}

/// Bounds for durations in seconds: 1 ms to 10 s.
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bounds for batch sizes: 1 to 512 requests.
pub const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Bounds for BMC calls in seconds: 10 ms to 2 minutes.
pub const BMC_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| Default::default()).collect(),
            count: Default::default(),
            sum: std::sync::atomic::AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, v: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }
}

/// A scrape's text, by metric family: each family's HELP and TYPE once, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    families: BTreeMap<String, (Kind, String, Vec<String>)>,
}

impl Exposition {
    /// One sample of `name` (a family of `kind`, described by `help`) with `labels`.
    pub fn sample(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let family = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| (kind, help.to_owned(), Vec::new()));
        let mut line = name.to_owned();
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", escape(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {value}");
        family.2.push(line);
    }

    /// A histogram's buckets, sum and count.
    pub fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) {
        use std::sync::atomic::Ordering::Relaxed;
        let family = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| (Kind::Histogram, help.to_owned(), Vec::new()));
        let series = |suffix: &str, extra: Option<(&str, String)>| {
            let mut line = format!("{name}{suffix}");
            let mut all: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), escape(v)))
                .collect();
            if let Some((k, v)) = extra {
                all.push((k.to_owned(), v));
            }
            if !all.is_empty() {
                line.push('{');
                let joined: Vec<String> = all.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                line.push_str(&joined.join(","));
                line.push('}');
            }
            line
        };
        let mut cumulative = 0;
        for (b, c) in h.bounds.iter().zip(&h.buckets) {
            cumulative += c.load(Relaxed);
            family.2.push(format!(
                "{} {cumulative}",
                series("_bucket", Some(("le", b.to_string())))
            ));
        }
        let count = h.count.load(Relaxed);
        family.2.push(format!(
            "{} {count}",
            series("_bucket", Some(("le", "+Inf".into())))
        ));
        family.2.push(format!(
            "{} {}",
            series("_sum", None),
            f64::from_bits(h.sum.load(Relaxed))
        ));
        family.2.push(format!("{} {count}", series("_count", None)));
    }

    /// A counter sample.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, Kind::Counter, help, labels, value as f64);
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, Kind::Gauge, help, labels, value);
    }

    /// The text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, (kind, help, samples)) in &self.families {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(
                out,
                "# HELP {name} {}",
                help.replace('\\', "\\\\").replace('\n', "\\n")
            );
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for s in samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Something that keeps counters: it writes them into a scrape.
pub trait Source: Send + Sync {
    fn render(&self, out: &mut Exposition);
}

/// BMC jobs this instance ran: attempts by kind and outcome, and how long their calls took.
#[derive(Debug, Default)]
pub struct JobStats {
    runs: std::sync::Mutex<BTreeMap<(String, &'static str), u64>>,
    seconds: std::sync::Mutex<BTreeMap<String, Arc<Histogram>>>,
}

impl JobStats {
    /// One attempt of a job of `kind`: `outcome` is succeeded, retried or failed.
    pub fn observe(&self, kind: &str, outcome: &'static str, seconds: f64) {
        *self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((kind.to_owned(), outcome))
            .or_default() += 1;
        let h = self
            .seconds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(kind.to_owned())
            .or_insert_with(|| Arc::new(Histogram::new(BMC_SECONDS)))
            .clone();
        h.observe(seconds);
    }

    fn render(&self, out: &mut Exposition) {
        let runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((kind, outcome), n) in runs {
            out.counter(
                "plinth_bmc_job_attempts_total",
                "BMC job attempts this instance ran, by kind and outcome (succeeded, retried, failed).",
                &[("kind", &kind), ("outcome", outcome)],
                n,
            );
        }
        let seconds = self
            .seconds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (kind, h) in seconds {
            out.histogram(
                "plinth_bmc_job_attempt_duration_seconds",
                "How long BMC job attempts took on this instance (the BMC calls and their checks), by kind.",
                &[("kind", &kind)],
                &h,
            );
        }
    }
}

/// Counters plinth-core keeps itself: transitions and agent reports.
#[derive(Debug, Default)]
pub struct CoreCounts {
    transitions: std::sync::Mutex<BTreeMap<(String, String), u64>>,
    reports: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Boot scripts by [`SCRIPT_OUTCOMES`] (atomics: this is the script endpoint's hot path).
    scripts: [std::sync::atomic::AtomicU64; SCRIPT_OUTCOMES.len()],
    /// The script-request batch queue's counts.
    boot_queue: crate::batch::Stats,
}

/// What a boot-script request was answered with: a script by its template, or a refusal (the
/// request was bad) or an error (plinth could not answer).
pub const SCRIPT_OUTCOMES: [&str; 6] = [
    "ramdisk",
    "localboot",
    "poweroff",
    "wait",
    "refused",
    "error",
];

impl CoreCounts {
    fn render(&self, out: &mut Exposition) {
        let transitions = self
            .transitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((verb, to), n) in transitions {
            out.counter(
                "plinth_transitions_total",
                "Lifecycle transitions this instance wrote, by verb and the state they led to (counted as written, before their transaction commits).",
                &[("verb", &verb), ("to", &to)],
                n,
            );
        }
        let reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (outcome, n) in SCRIPT_OUTCOMES.iter().zip(&self.scripts) {
            out.counter(
                "plinth_boot_scripts_total",
                "iPXE boot scripts this instance answered (every listener and path), by the script sent, or refused (a bad request) or error (plinth could not answer).",
                &[("script", outcome)],
                n.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        out.counter(
            "plinth_boot_batches_total",
            "Script-request batches this instance recorded in the database.",
            &[],
            self.boot_queue.batches(),
        );
        out.counter(
            "plinth_boot_batches_overlapped_total",
            "Script-request batches that started while another was in the database (boot.batches_in_flight).",
            &[],
            self.boot_queue.overlapped(),
        );
        for ((kind, outcome), n) in reports {
            out.counter(
                "plinth_agent_reports_total",
                "Ramdisk agent reports this instance received, by kind and whether they were taken (accepted) or refused.",
                &[("kind", kind), ("outcome", outcome)],
                n,
            );
        }
    }
}

/// The sources of this instance, and who may scrape without a token.
#[derive(Clone, Default)]
pub struct Registry {
    sources: Arc<RwLock<Vec<Arc<dyn Source>>>>,
    allow: Arc<RwLock<Vec<ipnet::IpNet>>>,
    /// The job runner's.
    pub jobs: Arc<JobStats>,
    core: Arc<CoreCounts>,
    /// The database's counts and when they were read: scrapes closer together than
    /// [`DB_INTERVAL`] share one read.
    db: Arc<std::sync::Mutex<Option<(std::time::Instant, plinth_db::metrics::Snapshot)>>>,
}

/// How often a scrape reads the database's counts at most (per instance). The counts cost a
/// scan of the leases, and a scraper every second made a DHCP storm at 8,000 DORA/s lose 9 %
/// of its rate on two cores (docs/benchmarks.md); the counters are always current.
pub const DB_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Registry {
    pub fn register(&self, source: Arc<dyn Source>) {
        self.sources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(source);
    }

    /// Addresses that may scrape without a token (`http.metrics_allow`).
    pub fn allow(&self, nets: Vec<ipnet::IpNet>) {
        *self
            .allow
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = nets;
    }

    /// A transition written (`verb` to the state `to`).
    pub fn transition(&self, verb: &str, to: &str) {
        *self
            .core
            .transitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((verb.to_owned(), to.to_owned()))
            .or_default() += 1;
    }

    /// An agent report of `kind` (inspection, clean, deploy), taken or refused.
    pub fn agent_report(&self, kind: &'static str, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "refused" };
        *self
            .core
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((kind, outcome))
            .or_default() += 1;
    }

    /// A boot-script request answered with `outcome`, one of [`SCRIPT_OUTCOMES`].
    pub fn boot_script(&self, outcome: &str) {
        if let Some(i) = SCRIPT_OUTCOMES.iter().position(|o| *o == outcome) {
            self.core.scripts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Where the script-request batch queue counts its batches.
    pub fn boot_queue(&self) -> crate::batch::Stats {
        self.core.boot_queue.clone()
    }

    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|n| n.contains(&ip))
    }

    fn render_sources(&self, out: &mut Exposition) {
        let sources = self
            .sources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for s in sources {
            s.render(out);
        }
        self.jobs.render(out);
        self.core.render(out);
    }
}

impl App {
    /// The metrics of this instance and its database, for `who` (a token that reads the
    /// inventory: not a client's, which sees only its own machines) or, with `None`, for an
    /// address the registry allows.
    pub async fn metrics_text(&self, who: Option<&Principal>) -> Result<String, Error> {
        if let Some(p) = who
            && p.role == Role::Client
        {
            return Err(Error::forbidden(
                "metrics describe the whole site: a client's token cannot read them",
            ));
        }
        let mut out = Exposition::default();
        self.metrics.render_sources(&mut out);
        let pool = self.pool();
        out.gauge(
            "plinth_db_pool_connections",
            "Database connections of this instance's pool, by whether they are in use.",
            &[("state", "idle")],
            pool.num_idle() as f64,
        );
        out.gauge(
            "plinth_db_pool_connections",
            "Database connections of this instance's pool, by whether they are in use.",
            &[("state", "in_use")],
            (pool.size() as usize).saturating_sub(pool.num_idle()) as f64,
        );
        for (kind, c) in [
            ("conflict", &plinth_db::ERRORS.conflict),
            ("unavailable", &plinth_db::ERRORS.unavailable),
            ("internal", &plinth_db::ERRORS.internal),
        ] {
            out.counter(
                "plinth_db_errors_total",
                "Database errors this process met: conflict (a concurrent change; retried), unavailable (no connection or primary), internal.",
                &[("kind", kind)],
                c.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        let cached = self
            .metrics
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < DB_INTERVAL)
            .map(|(_, s)| s.clone());
        let snap = match cached {
            Some(s) => Some(s),
            None => {
                let read = match pool.acquire().await {
                    Ok(mut conn) => plinth_db::metrics::snapshot(&mut conn).await.ok(),
                    Err(_) => None,
                };
                if let Some(s) = &read {
                    *self
                        .metrics
                        .db
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((std::time::Instant::now(), s.clone()));
                }
                read
            }
        };
        out.gauge(
            "plinth_db_up",
            "Whether the database answered this scrape's read of its counts, or one in the last 10 s (1), or not (0).",
            &[],
            if snap.is_some() { 1.0 } else { 0.0 },
        );
        let Some(snap) = snap else {
            return Ok(out.render());
        };
        for m in &snap.machines {
            out.gauge(
                "plinth_machines",
                "Machines by lifecycle state and maintenance flag.",
                &[
                    ("state", &m.state),
                    ("maintenance", if m.maintenance { "true" } else { "false" }),
                ],
                m.count as f64,
            );
        }
        for j in &snap.jobs {
            out.gauge(
                "plinth_bmc_jobs",
                "BMC jobs in the database by kind and state (queued and running are the queue).",
                &[("kind", &j.kind), ("state", &j.state)],
                j.count as f64,
            );
        }
        for b in &snap.bmcs {
            let reachable = match b.reachable {
                Some(true) => "true",
                Some(false) => "false",
                None => "unknown",
            };
            out.gauge(
                "plinth_bmcs",
                "BMCs by what power sync last found: reachable, unreachable, or not yet polled.",
                &[("reachable", reachable)],
                b.count as f64,
            );
        }
        for (health, count) in &snap.health {
            out.gauge(
                "plinth_machines_by_health",
                "Machines with a BMC by the hardware health it last reported (unknown: not read yet).",
                &[("health", health)],
                *count as f64,
            );
        }
        for p in &snap.pools {
            out.gauge(
                "plinth_dhcp_pool_addresses",
                "Addresses in a subnet's dynamic ranges.",
                &[("subnet", &p.subnet)],
                p.addresses as f64,
            );
        }
        for l in &snap.leases {
            out.gauge(
                "plinth_dhcp_leases",
                "DHCP leases by subnet and state.",
                &[("subnet", &l.subnet), ("state", &l.state)],
                l.count as f64,
            );
        }
        Ok(out.render())
    }

    /// This instance's metric sources and scrape allow-list.
    pub fn metrics(&self) -> &Registry {
        &self.metrics
    }
}

/// The file fetches noted for what a timeout names (`sightings`).
impl Source for crate::sightings::FetchLog {
    fn render(&self, out: &mut Exposition) {
        out.gauge(
            "plinth_fetch_notes_pending",
            "File fetches this instance noted and has not written yet.",
            &[],
            self.len() as f64,
        );
        out.counter(
            "plinth_fetch_notes_evicted_total",
            "File fetch notes dropped unwritten because the log was full (many client addresses).",
            &[],
            self.evicted(),
        );
    }
}

/// The DHCP client view (`dhcp::view`).
impl Source for crate::dhcp::ClientView {
    fn render(&self, out: &mut Exposition) {
        let (ready, answered, loads, _) = self.status(None);
        out.gauge(
            "plinth_dhcp_view_ready",
            "1 while this instance answers new clients' DISCOVERs from its view of the database (0: all go to the database).",
            &[],
            if ready { 1.0 } else { 0.0 },
        );
        out.counter(
            "plinth_dhcp_view_offers_total",
            "DISCOVERs of new clients this instance answered from its view, without the database.",
            &[],
            answered,
        );
        out.counter(
            "plinth_dhcp_view_loads_total",
            "Times this instance loaded its DHCP view (at start, after a lost listener, after subnet changes, after over 1,000 lease rows written at once).",
            &[],
            loads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        let mut e = Exposition::default();
        e.histogram("plinth_t_seconds", "T.", &[("kind", "power")], &h);
        assert_eq!(
            e.render(),
            "# HELP plinth_t_seconds T.\n# TYPE plinth_t_seconds histogram\n\
             plinth_t_seconds_bucket{kind=\"power\",le=\"0.1\"} 1\n\
             plinth_t_seconds_bucket{kind=\"power\",le=\"1\"} 3\n\
             plinth_t_seconds_bucket{kind=\"power\",le=\"+Inf\"} 4\n\
             plinth_t_seconds_sum{kind=\"power\"} 4.25\n\
             plinth_t_seconds_count{kind=\"power\"} 4\n"
        );
        let jobs = JobStats::default();
        jobs.observe("power", "succeeded", 0.2);
        jobs.observe("power", "retried", 0.3);
        let mut e = Exposition::default();
        jobs.render(&mut e);
        let text = e.render();
        assert!(
            text.contains("plinth_bmc_job_attempts_total{kind=\"power\",outcome=\"retried\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("plinth_bmc_job_attempt_duration_seconds_count{kind=\"power\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn families_are_described_once_and_labels_escaped() {
        let mut e = Exposition::default();
        e.counter("plinth_x_total", "X.", &[("a", "1")], 3);
        e.counter("plinth_x_total", "X.", &[("a", "q\"\\\n")], 4);
        e.gauge("plinth_a", "A.", &[], 1.5);
        assert_eq!(
            e.render(),
            "# HELP plinth_a A.\n# TYPE plinth_a gauge\nplinth_a 1.5\n\
             # HELP plinth_x_total X.\n# TYPE plinth_x_total counter\n\
             plinth_x_total{a=\"1\"} 3\nplinth_x_total{a=\"q\\\"\\\\\\n\"} 4\n"
        );
    }
}
