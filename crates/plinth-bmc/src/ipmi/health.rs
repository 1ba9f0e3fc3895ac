//! Health and the event log over IPMI (issue 20): the chassis faults of Get Chassis Status
//! (power fault, power control fault, overload, cooling fault, drive fault) and the System
//! Event Log. Sensor readings (the SDR repository) are not read: chassis status is what every
//! BMC answers, and a sensor crossing a threshold also logs a SEL entry.
//!
//! The SEL is walked from the cursor's record with Get SEL Entry (its next-record id), at most
//! `max` records a poll; a poll with nothing new costs Get SEL Info and one Get SEL Entry.
//! Get SEL Info's "most recent addition" time is not trusted to tell that nothing is new: it
//! counts in seconds, and ipmi_sim (like many BMCs) adds several records within one. Its "most
//! recent erase" time tells a cleared SEL, and so does a cursor record that is gone: the SEL is
//! then walked again from its first record. Full-record reads need no reservation; a BMC that
//! wants one anyway (completion code 0xC5) gets one from Reserve SEL.

use serde::{Deserialize, Serialize};

use super::{Ipmi, NETFN_CHASSIS, NETFN_STORAGE, completion_of};
use crate::health::{Health, LogBatch, LogEntry, decode_sel_record, judge_chassis_status};
use crate::{BmcError, Result};

const GET_SEL_INFO: u8 = 0x40;
const RESERVE_SEL: u8 = 0x42;
const GET_SEL_ENTRY: u8 = 0x43;
const FIRST: u16 = 0x0000;
const LAST: u16 = 0xffff;

/// Where the SEL was read up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SelCursor {
    /// The last record taken, when there was one.
    last: Option<u16>,
    /// Get SEL Info's most recent erase time.
    erase: u32,
}

fn u32_le(d: &[u8], at: usize) -> u32 {
    d.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// A command the BMC does not have, or data it has none of: no SEL, not an error.
fn absent(e: &BmcError) -> bool {
    matches!(completion_of(e), Some(0xc1 | 0xcb | 0xd4 | 0xd5 | 0xcc))
        || matches!(e, BmcError::Unsupported(_))
}

impl Ipmi {
    pub(super) async fn do_health(&self) -> Result<Health> {
        let d = self.command(NETFN_CHASSIS, 0x01, &[]).await?;
        if d.len() < 3 {
            return Err(BmcError::Protocol("short chassis status".into()));
        }
        Ok(judge_chassis_status(&d))
    }

    /// One SEL record: (next record id, the record's 16 bytes).
    async fn sel_entry(&self, reservation: &mut u16, id: u16) -> Result<(u16, Vec<u8>)> {
        for attempt in 0..2 {
            let [r0, r1] = reservation.to_le_bytes();
            let [i0, i1] = id.to_le_bytes();
            match self
                .command(NETFN_STORAGE, GET_SEL_ENTRY, &[r0, r1, i0, i1, 0, 0xff])
                .await
            {
                Ok(d) if d.len() >= 18 => {
                    return Ok((u16::from_le_bytes([d[0], d[1]]), d[2..18].to_vec()));
                }
                Ok(d) => {
                    return Err(BmcError::Protocol(format!(
                        "a SEL entry of {} bytes",
                        d.len()
                    )));
                }
                // The reservation was cancelled or is required: take one, once.
                Err(e) if completion_of(&e) == Some(0xc5) && attempt == 0 => {
                    let r = self.command(NETFN_STORAGE, RESERVE_SEL, &[]).await?;
                    *reservation = r
                        .get(..2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .ok_or_else(|| BmcError::Protocol("short SEL reservation".into()))?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(BmcError::Busy(
            "the SEL reservation kept being cancelled".into(),
        ))
    }

    pub(super) async fn do_log_entries(
        &self,
        cursor: Option<&str>,
        max: usize,
    ) -> Result<LogBatch> {
        let info = match self.command(NETFN_STORAGE, GET_SEL_INFO, &[]).await {
            Ok(d) if d.len() >= 13 => d,
            Ok(_) => return Err(BmcError::Protocol("short SEL info".into())),
            Err(e) if absent(&e) => {
                return Ok(LogBatch {
                    entries: Vec::new(),
                    cursor: cursor.unwrap_or_default().to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        let count = u16::from_le_bytes([info[1], info[2]]);
        let erase = u32_le(&info, 9);
        let mut reservation = 0u16;
        let old: Option<SelCursor> = cursor.and_then(|c| serde_json::from_str(c).ok());
        let done = |c: SelCursor, entries: Vec<LogEntry>| -> Result<LogBatch> {
            Ok(LogBatch {
                entries,
                cursor: serde_json::to_string(&c)
                    .map_err(|e| BmcError::Protocol(format!("SEL cursor: {e}")))?,
            })
        };
        let Some(old) = old else {
            // The first read: where the SEL ends now (its last record), nothing replayed.
            let last = if count == 0 {
                None
            } else {
                match self.sel_entry(&mut reservation, LAST).await {
                    Ok((_, r)) => Some(u16::from_le_bytes([r[0], r[1]])),
                    Err(e) if absent(&e) => None,
                    Err(e) => return Err(e),
                }
            };
            return done(SelCursor { last, erase }, Vec::new());
        };
        // Cleared since: everything in it now is new.
        let after = if old.erase != erase { None } else { old.last };
        if count == 0 {
            return done(SelCursor { last: None, erase }, Vec::new());
        }
        // Start at the record after the last one taken; when that record is gone, the SEL was
        // cleared (or the record deleted): from the first.
        let mut at = match after {
            None => FIRST,
            Some(l) => match self.sel_entry(&mut reservation, l).await {
                Ok((next, _)) => next,
                Err(e) if absent(&e) => FIRST,
                Err(e) => return Err(e),
            },
        };
        let mut entries = Vec::new();
        let mut last = after;
        let mut reached_end = at == LAST;
        while !reached_end && entries.len() < max {
            let (next, record) = match self.sel_entry(&mut reservation, at).await {
                Ok(x) => x,
                Err(e) if absent(&e) => break,
                Err(e) => return Err(e),
            };
            entries.extend(decode_sel_record(&record));
            last = Some(u16::from_le_bytes([record[0], record[1]]));
            reached_end = next == LAST;
            if next == at {
                break; // a BMC that points a record at itself
            }
            at = next;
        }
        done(SelCursor { last, erase }, entries)
    }
}
