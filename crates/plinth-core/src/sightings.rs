//! What plinth last saw of a machine (issue 22), so that a timeout says where a boot stopped:
//! never asked for a lease; got one and a script but fetched no file; fetched the kernel but
//! not the initrd; fetched everything, then nothing; or powered off.
//!
//! - [`FetchLog`]: the last file each client address fetched over TFTP and over HTTP. The file
//!   servers are benchmarked against atftpd and nginx, so a fetch costs a map update or two in
//!   memory, never a database write; [`App::flush_fetches`] (a
//!   reconciler pass every few seconds, and before a timeout is judged) writes what changed in
//!   one upsert. The map is bounded: a client spraying addresses evicts the oldest entries, and
//!   the database keeps only addresses plinth leased or assigned (plinth-db's `sightings`).
//!   Another instance reads what this one flushed: the rows are mapped to a machine by the MAC
//!   that held the address.
//! - [`App::last_seen`]: the machine's last lease, script request, file and power reading,
//!   each with its time and whether it predates the state, as one line ([`LastSeen::text`])
//!   for the failure reason and as JSON ([`LastSeen::details`]) for the event.
//! - [`App::fail_powered_off`]: a machine in a ramdisk state whose BMC reads `off` although
//!   plinth powered it on and has no job for it fails at once (the ramdisk powers off when it
//!   finds no network) instead of at its timeout.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use plinth_db::sightings::{Fetch, FetchSeen};
use plinth_types::MachineState;
use plinth_types::behaviour::{BEHAVIOUR, NetBoot};
use serde_json::json;
use uuid::Uuid;

use crate::{App, DbResult, Principal, Result};

/// The client addresses [`FetchLog`] holds between flushes.
pub const FETCH_LOG_ENTRIES: usize = 4096;
/// The longest path kept (in characters); longer ones are cut.
const MAX_PATH_CHARS: usize = 256;

/// How a file was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tftp,
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tftp => "tftp",
            Protocol::Http => "http",
        }
    }
}

/// The fetches of this instance not yet written, one per client address and protocol.
#[derive(Debug)]
pub struct FetchLog {
    pending: Mutex<HashMap<(Ipv4Addr, Protocol), Fetch>>,
    cap: usize,
    /// Entries evicted unwritten because the log was full.
    evicted: AtomicU64,
}

impl Default for FetchLog {
    fn default() -> FetchLog {
        FetchLog::new(FETCH_LOG_ENTRIES)
    }
}

impl FetchLog {
    pub fn new(cap: usize) -> FetchLog {
        FetchLog {
            pending: Mutex::new(HashMap::new()),
            cap: cap.max(1),
            evicted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Ipv4Addr, Protocol), Fetch>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `peer` fetched (or is fetching) `path`: `sent` of `size` bytes so far,
    /// `complete` when the transfer ended with the whole of what it was to send. Called by the
    /// file servers (HTTP at a body's start and end, TFTP at a transfer's end). IPv6 clients
    /// are not noted: plinth leases IPv4 addresses only.
    pub fn record(
        &self,
        peer: IpAddr,
        protocol: Protocol,
        path: &str,
        sent: u64,
        size: u64,
        complete: bool,
    ) {
        let address = match peer {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => a,
                None => return,
            },
        };
        let fetch = Fetch {
            address,
            protocol: protocol.as_str(),
            path: clean_path(path),
            bytes_sent: i64::try_from(sent).unwrap_or(i64::MAX),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            complete,
            at: Utc::now(),
        };
        let mut map = self.lock();
        let key = (address, protocol);
        if map.len() >= self.cap && !map.contains_key(&key) {
            // Full: the oldest entry goes (a scan, only when full: bounded by the cap).
            if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.at).map(|(k, _)| *k) {
                map.remove(&oldest);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        map.insert(key, fetch);
    }

    /// Takes every pending entry.
    fn take(&self) -> Vec<Fetch> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    /// Puts back entries a flush could not write, unless newer ones arrived meanwhile or the
    /// log filled up again.
    fn put_back(&self, fetches: Vec<Fetch>) {
        let mut map = self.lock();
        for f in fetches {
            let protocol = [Protocol::Tftp, Protocol::Http]
                .into_iter()
                .find(|p| p.as_str() == f.protocol)
                .unwrap_or(Protocol::Http);
            let key = (f.address, protocol);
            if map.len() >= self.cap && !map.contains_key(&key) {
                self.evicted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            map.entry(key).or_insert(f);
        }
    }

    /// What this instance noted of `address` over `protocol` and has not written yet.
    pub fn pending(&self, address: Ipv4Addr, protocol: Protocol) -> Option<Fetch> {
        self.lock().get(&(address, protocol)).cloned()
    }

    /// Entries waiting to be written.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted unwritten because the log was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// A path as it is stored and quoted: control characters replaced, at most
/// [`MAX_PATH_CHARS`] characters.
fn clean_path(path: &str) -> String {
    path.chars()
        .take(MAX_PATH_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What plinth last saw of a machine, ready to be said.
#[derive(Debug, Clone)]
pub struct LastSeen {
    pub seen: plinth_db::sightings::LastSeen,
}

impl LastSeen {
    /// One line, in a fixed order: lease; script; file; power. Each with its time (UTC) and how
    /// long before now, and "before <state> began" when it predates the state.
    pub fn text(&self) -> String {
        let s = &self.seen;
        let state = s.state.as_str();
        let when = |t: DateTime<Utc>| {
            let mut w = format!("at {} ({} ago", clock(t, s.now), span(s.now - t));
            if t < s.state_changed_at {
                w.push_str(&format!(", before {state} began"));
            }
            w.push(')');
            w
        };
        let since = format!(
            "since {state} began at {}",
            clock(s.state_changed_at, s.now)
        );
        let lease = match &s.lease {
            Some(l) => match (l.state.as_str(), l.bound_at) {
                ("bound", b) => format!("lease {} bound {}", l.address, when(b.unwrap_or(l.at))),
                ("free", Some(b)) => format!(
                    "lease {} bound {}, expired or released {}",
                    l.address,
                    when(b),
                    when(l.at)
                ),
                (state, _) => format!("lease {} {state} {}", l.address, when(l.at)),
            },
            None => format!("no DHCP lease {since}"),
        };
        let script = match &s.script {
            Some(b) => format!(
                "script request{} {}",
                b.script
                    .as_deref()
                    .map(|x| format!(" ({})", clean_path(x)))
                    .unwrap_or_default(),
                when(b.at)
            ),
            None => format!("no script request {since}"),
        };
        let file = match s.fetches.first() {
            Some(f) => format!(
                "file {} {}, {} of {} bytes, {} {}",
                f.protocol,
                f.path,
                f.bytes_sent,
                f.size,
                if f.complete { "complete" } else { "incomplete" },
                when(f.at)
            ),
            None => format!("no file fetched {since}"),
        };
        let power = match (&s.power, s.has_bmc) {
            (Some((p, at)), _) => format!("power {p}, read {}", when(*at)),
            (None, true) => "power never read from the BMC".to_owned(),
            (None, false) => "no BMC".to_owned(),
        };
        format!("last seen: {lease}; {script}; {file}; {power}")
    }

    /// The same as JSON, for the event's details.
    pub fn details(&self) -> serde_json::Value {
        let s = &self.seen;
        let before = |t: DateTime<Utc>| t < s.state_changed_at;
        let fetch = |f: &FetchSeen| {
            json!({
                "protocol": f.protocol, "path": f.path, "address": f.address.to_string(),
                "bytes_sent": f.bytes_sent, "size": f.size, "complete": f.complete,
                "at": f.at, "before_state": before(f.at),
            })
        };
        json!({
            "at": s.now,
            "state": s.state,
            "state_since": s.state_changed_at,
            "lease": s.lease.as_ref().map(|l| json!({
                "address": l.address.to_string(), "state": l.state, "at": l.at,
                "bound_at": l.bound_at, "before_state": before(l.bound_at.unwrap_or(l.at)),
            })),
            "script": s.script.as_ref().map(|b| json!({
                "script": b.script, "at": b.at, "before_state": before(b.at),
            })),
            "file": s.fetches.first().map(fetch),
            "files": s.fetches.iter().map(fetch).collect::<Vec<_>>(),
            "power": s.power.as_ref().map(|(p, at)| json!({
                "state": p, "read_at": at, "before_state": before(*at),
            })),
        })
    }
}

/// `05:31:02 UTC`, with the date when it is not `now`'s day.
fn clock(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M:%S UTC").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

/// `45 s`, `9 min 58 s`, `3 h 2 min`, `2 d 4 h`.
fn span(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    let (days, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {sec} s")
    } else {
        format!("{sec} s")
    }
}

impl App {
    /// This instance's log of file fetches (the TFTP and HTTP servers write to it).
    pub fn fetch_log(&self) -> &FetchLog {
        &self.fetches
    }

    /// Writes the file fetches noted since the last flush, in one statement. Entries that
    /// could not be written are kept for the next flush.
    pub async fn flush_fetches(&self) -> Result<u64> {
        let pending = self.fetches.take();
        if pending.is_empty() {
            return Ok(0);
        }
        let res = match self.conn().await {
            Ok(mut conn) => plinth_db::sightings::upsert_fetches(&mut conn, &pending)
                .await
                .db(),
            Err(e) => Err(e),
        };
        if res.is_err() {
            self.fetches.put_back(pending);
        }
        res
    }

    /// What plinth last saw of machine `id` (None: no such machine). Flushes this instance's
    /// file fetches first, so that what it served a moment ago counts.
    pub async fn last_seen(&self, id: Uuid) -> Result<Option<LastSeen>> {
        if let Err(e) = self.flush_fetches().await {
            tracing::warn!(error = %e.message, "file fetches not written");
        }
        let mut conn = self.conn().await?;
        let seen = plinth_db::sightings::last_seen(&mut conn, id).await.db()?;
        Ok(seen.map(|seen| LastSeen { seen }))
    }

    /// A reconciler pass: machines in a ramdisk state with a timeout whose BMC reads `off`
    /// though plinth powered them on and has no job for them (plinth-db's
    /// `sightings::powered_off` says exactly when) get the state's verb on timeout at once,
    /// with the reason and the last-seen summary. `grace`: at least the BMC call timeout, so
    /// that a power reading taken before plinth's power-on and recorded after it is not
    /// believed. Safe on every instance at once (each move is pinned to the version seen).
    pub async fn fail_powered_off(&self, grace: Duration) -> Result<usize> {
        let states: Vec<(MachineState, plinth_types::Verb)> = BEHAVIOUR
            .iter()
            .filter(|b| matches!(b.netboot, NetBoot::Ramdisk(_)))
            .filter_map(|b| b.deadline.map(|d| (b.state, d.on_timeout)))
            .collect();
        let names: Vec<&str> = states.iter().map(|(s, _)| s.as_str()).collect();
        let found = {
            let mut conn = self.conn().await?;
            plinth_db::sightings::powered_off(&mut conn, &names, grace.as_secs_f64(), 100)
                .await
                .db()?
        };
        let mut failed = 0;
        for m in found {
            let Some(verb) = states
                .iter()
                .find(|(s, _)| s.as_str() == m.state)
                .map(|(_, v)| *v)
            else {
                continue;
            };
            let seen = self.last_seen(m.id).await?;
            let mut reason = format!(
                "the machine powered off without reporting (the BMC read it off at {}, after plinth powered it on at {}): \
                 the ramdisk powers the machine off when it finds no network",
                m.off_at.format("%H:%M:%S UTC"),
                m.powered_on_at.format("%H:%M:%S UTC"),
            );
            if let Some(s) = &seen {
                reason.push_str("; ");
                reason.push_str(&s.text());
            }
            crate::console::quote_last_lines(self, m.id, &mut reason).await;
            let mut tx = self.begin().await?;
            let res = self
                .apply(
                    &mut tx,
                    &Principal::system(),
                    m.id,
                    verb,
                    Some(m.state_version),
                    Some(&reason),
                    None,
                    json!({
                        "powered_off": { "off_at": m.off_at, "powered_on_at": m.powered_on_at },
                        "last_seen": seen.as_ref().map(LastSeen::details),
                    }),
                )
                .await;
            match res {
                Ok(_) => {
                    tx.commit().await.db()?;
                    failed += 1;
                    tracing::warn!(machine_id = %m.id, state = %m.state, "{reason}");
                }
                // It moved meanwhile (a report arrived, another instance got there).
                Err(e) if e.kind == plinth_types::ErrorKind::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use plinth_db::sightings::{LastSeen as Seen, LeaseSeen, ScriptSeen};

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, h, m, s).unwrap()
    }

    fn seen() -> Seen {
        Seen {
            now: at(5, 40, 0),
            state: "inspecting".into(),
            state_changed_at: at(5, 30, 0),
            lease: None,
            script: None,
            fetches: vec![],
            power: None,
            has_bmc: true,
        }
    }

    #[test]
    fn nothing_seen_says_so_since_the_state_began() {
        let t = LastSeen { seen: seen() }.text();
        assert_eq!(
            t,
            "last seen: no DHCP lease since inspecting began at 05:30:00 UTC; \
             no script request since inspecting began at 05:30:00 UTC; \
             no file fetched since inspecting began at 05:30:00 UTC; power never read from the BMC"
        );
    }

    #[test]
    fn each_sighting_has_its_time_and_whether_it_predates_the_state() {
        let mut s = seen();
        s.lease = Some(LeaseSeen {
            address: "10.0.0.5".parse().unwrap(),
            state: "bound".into(),
            at: at(2, 30, 0),
            bound_at: Some(at(2, 30, 0)),
        });
        s.script = Some(ScriptSeen {
            at: at(5, 31, 5),
            script: Some("ramdisk.ipxe".into()),
        });
        s.fetches = vec![FetchSeen {
            address: "10.0.0.5".parse().unwrap(),
            protocol: "http".into(),
            path: "ramdisk/initrd.img".into(),
            bytes_sent: 1024,
            size: 4096,
            complete: false,
            at: at(5, 31, 7),
        }];
        s.power = Some(("on".into(), at(5, 39, 30)));
        let l = LastSeen { seen: s };
        assert_eq!(
            l.text(),
            "last seen: lease 10.0.0.5 bound at 02:30:00 UTC (3 h 10 min ago, before inspecting began); \
             script request (ramdisk.ipxe) at 05:31:05 UTC (8 min 55 s ago); \
             file http ramdisk/initrd.img, 1024 of 4096 bytes, incomplete at 05:31:07 UTC (8 min 53 s ago); \
             power on, read at 05:39:30 UTC (30 s ago)"
        );
        let d = l.details();
        assert_eq!(d["lease"]["before_state"], true);
        assert_eq!(d["script"]["before_state"], false);
        assert_eq!(d["file"]["complete"], false);
        assert_eq!(d["file"]["bytes_sent"], 1024);
        assert_eq!(d["power"]["state"], "on");
    }

    #[test]
    fn a_lease_that_lapsed_says_when_it_was_bound_and_freed() {
        let mut s = seen();
        s.lease = Some(LeaseSeen {
            address: "10.0.0.5".parse().unwrap(),
            state: "free".into(),
            at: at(5, 35, 0),
            bound_at: Some(at(5, 31, 0)),
        });
        let l = LastSeen { seen: s };
        assert!(
            l.text().starts_with(
                "last seen: lease 10.0.0.5 bound at 05:31:00 UTC (9 min 0 s ago), \
                 expired or released at 05:35:00 UTC (5 min 0 s ago); "
            ),
            "{}",
            l.text()
        );
        assert_eq!(l.details()["lease"]["state"], "free");
    }

    #[test]
    fn a_machine_without_a_bmc_says_so() {
        let mut s = seen();
        s.has_bmc = false;
        assert!(LastSeen { seen: s }.text().ends_with("; no BMC"));
    }

    #[test]
    fn older_days_carry_their_date() {
        assert_eq!(clock(at(5, 0, 0), at(5, 1, 0)), "05:00:00 UTC");
        let day_before = Utc.with_ymd_and_hms(2026, 12, 5, 23, 0, 0).unwrap();
        assert_eq!(clock(day_before, at(5, 1, 0)), "2026-12-05 23:00:00 UTC");
        assert_eq!(span(at(5, 1, 0) - day_before), "6 h 1 min");
        assert_eq!(span(chrono::TimeDelta::seconds(200_000)), "2 d 7 h");
        assert_eq!(span(chrono::TimeDelta::seconds(-5)), "0 s");
    }

    #[test]
    fn the_log_is_bounded_and_keeps_the_newest() {
        let log = FetchLog::new(3);
        for i in 0..10u8 {
            log.record(
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
                Protocol::Tftp,
                "undionly.kpxe",
                0,
                10,
                false,
            );
        }
        assert_eq!((log.len(), log.evicted()), (3, 7));
        let mut e = crate::metrics::Exposition::default();
        crate::metrics::Source::render(&log, &mut e);
        let text = e.render();
        assert!(
            text.contains("\nplinth_fetch_notes_evicted_total 7\n"),
            "{text}"
        );
        assert!(text.contains("\nplinth_fetch_notes_pending 3\n"), "{text}");
        let mut kept: Vec<u8> = log.take().iter().map(|f| f.address.octets()[3]).collect();
        kept.sort();
        assert_eq!(kept, vec![7, 8, 9]);
        // One entry per address and protocol: the end of a transfer replaces its start.
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        log.record(a, Protocol::Http, "k", 0, 10, false);
        log.record(a, Protocol::Http, "k", 10, 10, true);
        log.record(a, Protocol::Tftp, "x\n\u{1b}[2J", 0, 1, false);
        log.record("::1".parse().unwrap(), Protocol::Http, "k", 0, 1, false);
        let mut all = log.take();
        all.sort_by_key(|f| f.protocol);
        assert_eq!(all.len(), 2);
        assert!(all[0].complete && all[0].bytes_sent == 10);
        assert_eq!(all[1].path, "x??[2J");
        assert!(log.is_empty());
    }
}
