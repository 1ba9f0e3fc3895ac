//! The emulated BMC's chassis faults and System Event Log (issue 20): Get Chassis Status with
//! the fault bits set by [`IpmiEmulator::set_chassis_faults`], and Get SEL Info, Reserve SEL
//! and Get SEL Entry over records appended by [`IpmiEmulator::add_sel`] (standard records,
//! type 0x02) and emptied by [`IpmiEmulator::clear_sel`]. Kept apart from the session and
//! boot code: [`SelState::command`] answers these commands before the emulator's own table.

use super::{After, IpmiEmulator, cc, lock};

/// Chassis faults (Get Chassis Status bytes 1 and 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChassisFaults {
    pub power_fault: bool,
    pub overload: bool,
    pub cooling_fault: bool,
    pub drive_fault: bool,
}

#[derive(Debug, Default)]
pub(super) struct SelState {
    faults: ChassisFaults,
    /// (record id, 16 record bytes), in the order added.
    records: Vec<(u16, [u8; 16])>,
    next_id: u16,
    last_add: u32,
    last_erase: u32,
    reservation: u16,
    /// Get SEL Entry refuses reservation 0 (as some BMCs do).
    require_reservation: bool,
}

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

impl SelState {
    /// The answer to a chassis-status or SEL command; `None` for any other command.
    pub(super) fn command(
        &mut self,
        netfn: u8,
        cmd: u8,
        d: &[u8],
        power: bool,
    ) -> Option<(u8, Vec<u8>, After)> {
        let ok = |data: Vec<u8>| Some((cc::OK, data, After::Nothing));
        let fail = |code: u8| Some((code, vec![], After::Nothing));
        match (netfn, cmd) {
            (0x00, 0x01) => {
                let f = self.faults;
                let b1 = u8::from(power)
                    | if f.overload { 0x02 } else { 0 }
                    | if f.power_fault { 0x08 } else { 0 };
                let b3 =
                    if f.drive_fault { 0x04 } else { 0 } | if f.cooling_fault { 0x08 } else { 0 };
                ok(vec![b1, 0x10, b3, 0x00])
            }
            // Get SEL Info: version 0x51, entries, free space, last add, last erase, support.
            (0x0a, 0x40) => {
                let mut out = vec![0x51];
                out.extend((self.records.len() as u16).to_le_bytes());
                out.extend(0x1000u16.to_le_bytes());
                out.extend(self.last_add.to_le_bytes());
                out.extend(self.last_erase.to_le_bytes());
                out.push(0x02); // Reserve SEL supported
                ok(out)
            }
            (0x0a, 0x42) => {
                self.reservation = self.reservation.wrapping_add(1).max(1);
                ok(self.reservation.to_le_bytes().to_vec())
            }
            (0x0a, 0x43) => {
                let [r0, r1, i0, i1, offset, _count] = d[..] else {
                    return fail(cc::LENGTH);
                };
                let res = u16::from_le_bytes([r0, r1]);
                if (res != 0 || self.require_reservation) && res != self.reservation {
                    return fail(0xc5);
                }
                if offset != 0 {
                    return fail(cc::PARAMETER_OUT_OF_RANGE);
                }
                let want = u16::from_le_bytes([i0, i1]);
                let at = match want {
                    0x0000 if !self.records.is_empty() => 0,
                    0xffff if !self.records.is_empty() => self.records.len() - 1,
                    id => match self.records.iter().position(|(r, _)| *r == id) {
                        Some(i) => i,
                        None => return fail(cc::NOT_PRESENT),
                    },
                };
                let next = self.records.get(at + 1).map_or(0xffff, |(r, _)| *r);
                let mut out = next.to_le_bytes().to_vec();
                out.extend(self.records[at].1);
                ok(out)
            }
            _ => None,
        }
    }
}

impl IpmiEmulator {
    pub fn set_chassis_faults(&self, f: ChassisFaults) {
        lock(&self.state).sel.faults = f;
    }

    /// Appends a standard SEL record (type 0x02): `sensor_type`, `sensor` number, `event_type`
    /// (0x01 threshold, 0x6f sensor-specific), the event `offset`, and whether it is a
    /// deassertion. Returns its record id.
    pub fn add_sel(
        &self,
        sensor_type: u8,
        sensor: u8,
        event_type: u8,
        offset: u8,
        deassert: bool,
    ) -> u16 {
        let mut b = lock(&self.state);
        let s = &mut b.sel;
        // Ids start at 1 and skip the reserved 0x0000 and 0xffff.
        s.next_id = s.next_id.wrapping_add(1).clamp(1, 0xfffe);
        let id = s.next_id;
        let t = now();
        let [i0, i1] = id.to_le_bytes();
        let [t0, t1, t2, t3] = t.to_le_bytes();
        let dir = if deassert { 0x80 } else { 0 };
        s.records.push((
            id,
            [
                i0,
                i1,
                0x02,
                t0,
                t1,
                t2,
                t3,
                0x20,
                0x00,
                0x04,
                sensor_type,
                sensor,
                dir | event_type,
                offset & 0x0f,
                0xff,
                0xff,
            ],
        ));
        s.last_add = t.max(s.last_add.wrapping_add(1));
        id
    }

    /// Empties the SEL (as Clear SEL does).
    pub fn clear_sel(&self) {
        let mut b = lock(&self.state);
        b.sel.records.clear();
        b.sel.last_erase = now().max(b.sel.last_erase.wrapping_add(1));
    }

    /// Get SEL Entry refuses reservation 0 from now on.
    pub fn set_sel_requires_reservation(&self, yes: bool) {
        lock(&self.state).sel.require_reservation = yes;
    }
}
