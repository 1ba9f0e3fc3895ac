//! Health and the event log over Redfish (issue 20).
//!
//! Health: the ComputerSystem's `Status` (Health and HealthRollup), then each of its chassis
//! (`Links.Chassis`, or the service's `Chassis` collection): the chassis' own `Status`, its
//! `Thermal` (Temperatures, Fans) and `Power` (PowerSupplies, Voltages), or, where a BMC has
//! neither, the newer `Sensors` collection. Only the system is required: a chassis or a
//! resource that is missing or fails is skipped.
//!
//! The event log: the LogServices of the system and of its managers (`Links.ManagedBy`, or
//! the `Managers` collection), each service's `Entries` read page by page
//! (`Members@odata.nextLink`). Entries may come in any order: the cursor keeps, per service,
//! the latest `Created` time seen and the ids seen at that time, so an entry is new when it is
//! later, or as late with an id not seen. What one poll reads is bounded ([`MAX_SERVICES`],
//! [`MAX_PAGES`], [`MAX_ENTRIES_READ`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Redfish;
use crate::health::{
    Health, LogBatch, LogEntry, judge_power, judge_sensor, judge_status, judge_thermal,
    parse_log_entry,
};
use crate::{BmcError, Result};

/// Chassis read per health poll.
pub const MAX_CHASSIS: usize = 4;
/// Sensors read from a `Sensors` collection whose members are not expanded.
pub const MAX_SENSORS: usize = 128;
/// Log services read per poll.
pub const MAX_SERVICES: usize = 8;
/// Pages of one service's entries read per poll.
pub const MAX_PAGES: usize = 16;
/// Entries of one service read per poll.
pub const MAX_ENTRIES_READ: usize = 5000;
/// Ids kept per service in the cursor (those at its latest time).
const MAX_CURSOR_IDS: usize = 256;

/// Where one service's log was read up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SvcCursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ids: Vec<String>,
}

impl SvcCursor {
    fn is_new(&self, e: &LogEntry) -> bool {
        match (e.time, self.t) {
            (Some(et), Some(t)) => et > t || (et == t && !self.ids.contains(&e.id)),
            (Some(_), None) => true,
            // Without a time an entry is only placed against others without one.
            (None, None) => !self.ids.contains(&e.id),
            (None, Some(_)) => false,
        }
    }

    fn advance(&mut self, e: &LogEntry) {
        match (e.time, self.t) {
            (Some(et), Some(t)) if et == t => self.ids.push(e.id.clone()),
            (Some(et), Some(t)) if et < t => {}
            (Some(et), _) => {
                self.t = Some(et);
                self.ids = vec![e.id.clone()];
            }
            (None, None) => self.ids.push(e.id.clone()),
            (None, Some(_)) => {}
        }
        if self.ids.len() > MAX_CURSOR_IDS {
            let drop = self.ids.len() - MAX_CURSOR_IDS;
            self.ids.drain(..drop);
        }
    }
}

fn order(a: &LogEntry, b: &LogEntry) -> std::cmp::Ordering {
    (a.time, a.id.len(), &a.id).cmp(&(b.time, b.id.len(), &b.id))
}

fn link(v: &Value, key: &str) -> Option<String> {
    v[key]["@odata.id"].as_str().map(str::to_owned)
}

fn links(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["@odata.id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Redfish {
    async fn value(&self, path: &str) -> Result<Value> {
        self.get::<Value>(path).await.map(|(v, _)| v)
    }

    /// The members of a collection at `path` (from the service root's `key` when `path` is
    /// `None`), at most `max`; empty when there is none.
    async fn members_of(&self, path: Option<String>, key: &str, max: usize) -> Vec<String> {
        let path = match path {
            Some(p) => p,
            None => match self
                .value("/redfish/v1")
                .await
                .ok()
                .and_then(|r| link(&r, key))
            {
                Some(p) => p,
                None => return Vec::new(),
            },
        };
        match self.value(&path).await {
            Ok(c) => links(&c["Members"]).into_iter().take(max).collect(),
            Err(e) => {
                tracing::debug!(%path, error = %e, "Redfish collection not read");
                Vec::new()
            }
        }
    }

    pub(super) async fn do_health(&self) -> Result<Health> {
        let path = self.system_path().await?;
        let sys = self.value(&path).await?;
        let (overall, c) = judge_status(&sys, "system", "System");
        let mut comps: Vec<_> = c.into_iter().collect();
        let mut chassis = links(&sys["Links"]["Chassis"]);
        if chassis.is_empty() {
            chassis = self.members_of(None, "Chassis", MAX_CHASSIS).await;
        }
        for ch_path in chassis.into_iter().take(MAX_CHASSIS) {
            let Ok(ch) = self.value(&ch_path).await else {
                continue;
            };
            comps.extend(judge_status(&ch, "chassis", "Chassis").1);
            let (thermal, power) = (link(&ch, "Thermal"), link(&ch, "Power"));
            if thermal.is_none() && power.is_none() {
                comps.extend(self.sensors(link(&ch, "Sensors")).await);
                continue;
            }
            if let Some(t) = thermal
                && let Ok(v) = self.value(&t).await
            {
                comps.extend(judge_thermal(&v));
            }
            if let Some(p) = power
                && let Ok(v) = self.value(&p).await
            {
                comps.extend(judge_power(&v));
            }
        }
        Ok(Health::from_parts(overall, comps))
    }

    /// The sensors of a `Sensors` collection that are not OK (members expanded or not).
    async fn sensors(&self, path: Option<String>) -> Vec<crate::health::HealthComponent> {
        let Some(path) = path else {
            return Vec::new();
        };
        let Ok(c) = self.value(&path).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in c["Members"]
            .as_array()
            .into_iter()
            .flatten()
            .take(MAX_SENSORS)
        {
            if m.get("Status").is_some() || m.get("Reading").is_some() {
                out.extend(judge_sensor(m));
            } else if let Some(p) = m["@odata.id"].as_str()
                && let Ok(s) = self.value(p).await
            {
                out.extend(judge_sensor(&s));
            }
        }
        out
    }

    /// The `Entries` paths of the system's and its managers' log services.
    async fn log_services(&self) -> Result<Vec<String>> {
        let path = self.system_path().await?;
        let sys = self.value(&path).await?;
        let mut collections: Vec<String> = link(&sys, "LogServices").into_iter().collect();
        let mut managers = links(&sys["Links"]["ManagedBy"]);
        if managers.is_empty() {
            managers = self.members_of(None, "Managers", 2).await;
        }
        for m in managers.into_iter().take(2) {
            if let Ok(v) = self.value(&m).await
                && let Some(l) = link(&v, "LogServices")
            {
                collections.push(l);
            }
        }
        let mut entries = Vec::new();
        for c in collections {
            for svc in self.members_of(Some(c), "", MAX_SERVICES).await {
                if entries.len() >= MAX_SERVICES {
                    break;
                }
                match self.value(&svc).await {
                    Ok(v) => {
                        if let Some(e) = link(&v, "Entries")
                            && !entries.contains(&e)
                        {
                            entries.push(e);
                        }
                    }
                    Err(e) => tracing::debug!(%svc, error = %e, "Redfish log service not read"),
                }
            }
        }
        Ok(entries)
    }

    /// Every entry of one service, page by page, bounded.
    async fn read_entries(&self, path: &str) -> Result<Vec<LogEntry>> {
        let mut out = Vec::new();
        let mut next = Some(path.to_owned());
        let mut pages = 0;
        while let Some(p) = next.take() {
            let v = self.value(&p).await?;
            for m in v["Members"].as_array().into_iter().flatten() {
                if out.len() >= MAX_ENTRIES_READ {
                    break;
                }
                out.extend(parse_log_entry(m, path));
            }
            pages += 1;
            if pages >= MAX_PAGES || out.len() >= MAX_ENTRIES_READ {
                tracing::debug!(%path, pages, entries = out.len(), "Redfish log read bounded");
                break;
            }
            next = v["Members@odata.nextLink"].as_str().map(str::to_owned);
        }
        Ok(out)
    }

    pub(super) async fn do_log_entries(
        &self,
        cursor: Option<&str>,
        max: usize,
    ) -> Result<LogBatch> {
        // An unreadable cursor (from another driver, say) starts over as a first read.
        let mut cur: Option<BTreeMap<String, SvcCursor>> =
            cursor.and_then(|c| serde_json::from_str(c).ok());
        let first = cur.is_none();
        let map = cur.get_or_insert_with(BTreeMap::new);
        let mut fresh: Vec<LogEntry> = Vec::new();
        for svc in self.log_services().await? {
            let entries = match self.read_entries(&svc).await {
                Ok(e) => e,
                Err(e) if matches!(e, BmcError::Auth) => return Err(e),
                Err(e) => {
                    tracing::debug!(%svc, error = %e, "Redfish log entries not read");
                    continue;
                }
            };
            match map.get(&svc) {
                // A service seen for the first time: where it ends now, nothing replayed.
                None => {
                    let mut c = SvcCursor::default();
                    let mut all = entries;
                    all.sort_by(order);
                    for e in &all {
                        c.advance(e);
                    }
                    map.insert(svc, c);
                }
                Some(c) => fresh.extend(entries.into_iter().filter(|e| c.is_new(e))),
            }
        }
        if first {
            fresh.clear();
        }
        fresh.sort_by(order);
        fresh.truncate(max);
        for e in &fresh {
            if let Some(c) = map.get_mut(&e.source) {
                c.advance(e);
            }
        }
        let cursor = serde_json::to_string(map)
            .map_err(|e| BmcError::Protocol(format!("log cursor: {e}")))?;
        Ok(LogBatch {
            entries: fresh,
            cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthStatus;

    fn e(id: &str, t: Option<i64>) -> LogEntry {
        LogEntry {
            id: id.into(),
            time: t.and_then(|t| DateTime::from_timestamp(t, 0)),
            severity: HealthStatus::Ok,
            message: String::new(),
            source: "s".into(),
        }
    }

    #[test]
    fn the_cursor_takes_each_entry_once_in_any_order() {
        let mut c = SvcCursor::default();
        let mut log = vec![e("3", Some(20)), e("1", Some(10)), e("2", Some(20))];
        log.sort_by(order);
        assert_eq!(
            log.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        for x in &log {
            assert!(c.is_new(x));
            c.advance(x);
        }
        assert!(log.iter().all(|x| !c.is_new(x)));
        // Same second, another id: new; earlier: not; later: new.
        assert!(c.is_new(&e("4", Some(20))));
        assert!(!c.is_new(&e("0", Some(5))));
        assert!(c.is_new(&e("10", Some(21))));
        // Entries without times are placed by id only against others without.
        let mut u = SvcCursor::default();
        u.advance(&e("a", None));
        assert!(!u.is_new(&e("a", None)) && u.is_new(&e("b", None)));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<SvcCursor>(&json).unwrap(), c);
    }
}
