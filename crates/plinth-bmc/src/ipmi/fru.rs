//! FRU inventory data (IPMI Platform Management FRU Information Storage Definition v1.0 rev 1.3),
//! sans-IO: the common header, then the chassis, board and product info areas, each a run of
//! type/length-prefixed fields. Only what identifies a machine is kept: manufacturer, product
//! name, serial numbers, part number. A BMC's FRU data is whatever a vendor's tool wrote into an
//! EEPROM years ago: a bad checksum or an area that runs past the end drops that area, never
//! the rest, and no input makes the parser panic or allocate more than its input.

/// What the FRU areas say about the machine; each field as written, trimmed, or `None` when
/// absent, empty or not text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FruInfo {
    pub chassis_part: Option<String>,
    pub chassis_serial: Option<String>,
    pub board_manufacturer: Option<String>,
    pub board_product: Option<String>,
    pub board_serial: Option<String>,
    pub product_manufacturer: Option<String>,
    pub product_name: Option<String>,
    pub product_part: Option<String>,
    pub product_serial: Option<String>,
}

impl FruInfo {
    /// The machine's manufacturer: the product area's, else the board's.
    pub fn manufacturer(&self) -> Option<String> {
        self.product_manufacturer
            .clone()
            .or_else(|| self.board_manufacturer.clone())
    }
    /// The model: the product name, else the board's product name.
    pub fn model(&self) -> Option<String> {
        self.product_name
            .clone()
            .or_else(|| self.board_product.clone())
    }
    /// The serial number: the product's (what the vendor's label shows), else the chassis's,
    /// else the board's.
    pub fn serial(&self) -> Option<String> {
        self.product_serial
            .clone()
            .or_else(|| self.chassis_serial.clone())
            .or_else(|| self.board_serial.clone())
    }
}

/// Why FRU data cannot be read at all (a damaged area is skipped instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FruError {
    #[error("FRU data shorter than its 8-byte header")]
    Short,
    #[error("FRU header format version {0:#04x} (1 expected)")]
    Version(u8),
    #[error("FRU header checksum does not add up")]
    Checksum,
}

/// Parses FRU data from offset 0. Areas with a bad checksum, an unknown version or a length
/// past the end are left out.
pub fn parse(data: &[u8]) -> Result<FruInfo, FruError> {
    let header = check_header(data)?;
    let mut info = FruInfo::default();
    // [internal use, chassis, board, product, multirecord] offsets in multiples of 8 bytes.
    if let Some(fields) = area(data, header[2], 3) {
        let mut f = fields.into_iter();
        info.chassis_part = f.next().flatten();
        info.chassis_serial = f.next().flatten();
    }
    if let Some(fields) = area(data, header[3], 6) {
        let mut f = fields.into_iter();
        info.board_manufacturer = f.next().flatten();
        info.board_product = f.next().flatten();
        info.board_serial = f.next().flatten();
    }
    if let Some(fields) = area(data, header[4], 3) {
        let mut f = fields.into_iter();
        info.product_manufacturer = f.next().flatten();
        info.product_name = f.next().flatten();
        info.product_part = f.next().flatten();
        // version, then serial
        f.next();
        info.product_serial = f.next().flatten();
    }
    Ok(info)
}

/// The byte offsets of the chassis, board and product info areas that the common header
/// points at (what a reader fetches; the multirecord area is not needed).
pub fn info_areas(header: &[u8]) -> Result<Vec<usize>, FruError> {
    let h = check_header(header)?;
    Ok(h[2..5]
        .iter()
        .filter(|o| **o != 0)
        .map(|o| usize::from(*o) * 8)
        .collect())
}

fn check_header(data: &[u8]) -> Result<&[u8], FruError> {
    let header = data.get(..8).ok_or(FruError::Short)?;
    if header[0] & 0x0f != 0x01 {
        return Err(FruError::Version(header[0]));
    }
    if checksum(header) != 0 {
        return Err(FruError::Checksum);
    }
    Ok(header)
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// The text fields of the area at `offset` (in 8-byte units; 0: none), after `skip` fixed bytes
/// (version and length included). `None` when the area is absent or damaged.
fn area(data: &[u8], offset: u8, skip: usize) -> Option<Vec<Option<String>>> {
    if offset == 0 {
        return None;
    }
    let start = usize::from(offset) * 8;
    let head = data.get(start..start + 2)?;
    if head[0] & 0x0f != 0x01 {
        return None;
    }
    let len = usize::from(head[1]) * 8;
    let body = data.get(start..start + len)?;
    if len < skip + 1 || checksum(body) != 0 {
        return None;
    }
    let mut fields = Vec::new();
    let mut at = skip;
    // Fields up to the end-of-fields marker (0xc1), the checksum byte excluded.
    while at < len - 1 {
        let tl = body[at];
        if tl == 0xc1 {
            break;
        }
        let n = usize::from(tl & 0x3f);
        let bytes = body.get(at + 1..at + 1 + n)?;
        if at + 1 + n > len - 1 {
            return None;
        }
        fields.push(decode(tl >> 6, bytes));
        at += 1 + n;
    }
    Some(fields)
}

/// A field by its type: 0 binary (not text), 1 BCD plus, 2 6-bit packed ASCII, 3 8-bit
/// (ASCII/Latin-1 with the English language code every BMC uses).
fn decode(kind: u8, bytes: &[u8]) -> Option<String> {
    let s: String = match kind {
        1 => bytes
            .iter()
            .flat_map(|b| [b >> 4, b & 0x0f])
            .map(|d| match d {
                0..=9 => char::from(b'0' + d),
                0xa => ' ',
                0xb => '-',
                0xc => '.',
                _ => '?',
            })
            .collect(),
        2 => {
            // Four characters in three bytes, least significant bits first; 0x20 + the value.
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let mut v = 0u32;
                for (i, b) in chunk.iter().enumerate() {
                    v |= u32::from(*b) << (8 * i);
                }
                let chars = chunk.len() * 8 / 6;
                for i in 0..chars {
                    out.push(char::from(0x20 + ((v >> (6 * i)) & 0x3f) as u8));
                }
            }
            out
        }
        3 => bytes.iter().map(|b| char::from(*b)).collect(),
        _ => return None,
    };
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty() && !t.chars().any(char::is_control)).then(|| t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An area: version 1, its length, `fixed` bytes, text fields, end marker, padding,
    /// checksum.
    fn area(fixed: &[u8], fields: &[&str]) -> Vec<u8> {
        let mut a = vec![0x01, 0x00];
        a.extend_from_slice(fixed);
        for f in fields {
            a.push(0xc0 | f.len() as u8);
            a.extend_from_slice(f.as_bytes());
        }
        a.push(0xc1);
        while (a.len() + 1) % 8 != 0 {
            a.push(0);
        }
        a[1] = ((a.len() + 1) / 8) as u8;
        a.push(0u8.wrapping_sub(checksum(&a)));
        a
    }

    fn fru(chassis: &[u8], board: &[u8], product: &[u8]) -> Vec<u8> {
        let mut h = vec![0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
        let mut off = 1;
        for (i, a) in [chassis, board, product].iter().enumerate() {
            if !a.is_empty() {
                h[2 + i] = off;
                off += (a.len() / 8) as u8;
            }
        }
        h.push(0u8.wrapping_sub(checksum(&h)));
        [h, chassis.to_vec(), board.to_vec(), product.to_vec()].concat()
    }

    #[test]
    fn the_three_areas() {
        let data = fru(
            &area(&[0x17], &["CH-1", "CHS-9"]),
            &area(&[0, 0, 0, 0], &["Board Co", "X11", "BRD-7", "P-1", ""]),
            &area(
                &[0],
                &["Vendor", "Server 1", "S1-PART", "1.0", "SN-42", "asset"],
            ),
        );
        let f = parse(&data).unwrap();
        assert_eq!(f.chassis_serial.as_deref(), Some("CHS-9"));
        assert_eq!(f.board_manufacturer.as_deref(), Some("Board Co"));
        assert_eq!(f.product_part.as_deref(), Some("S1-PART"));
        assert_eq!(
            (f.manufacturer(), f.model(), f.serial()),
            (
                Some("Vendor".into()),
                Some("Server 1".into()),
                Some("SN-42".into())
            )
        );
        assert_eq!(info_areas(&data).unwrap(), [8, 24, 56]);
    }

    #[test]
    fn board_only_and_blank_fields() {
        // Many white-box boards fill only the board area; a product area of blanks is as good
        // as none.
        let data = fru(
            &[],
            &area(&[0, 0, 0, 0], &["Board Co", "X11", "BRD-7"]),
            &area(&[0], &["  ", "", "", "", "   "]),
        );
        let f = parse(&data).unwrap();
        assert_eq!(
            (f.manufacturer(), f.model(), f.serial()),
            (
                Some("Board Co".into()),
                Some("X11".into()),
                Some("BRD-7".into())
            )
        );
    }

    #[test]
    fn six_bit_ascii_and_bcd_plus() {
        // "IPMI" packed: I=0x29, P=0x30, M=0x2d, I=0x29.
        let v: u32 = 0x29 | (0x30 << 6) | (0x2d << 12) | (0x29 << 18);
        let packed = [v as u8, (v >> 8) as u8, (v >> 16) as u8];
        assert_eq!(decode(2, &packed).as_deref(), Some("IPMI"));
        assert_eq!(decode(1, &[0x12, 0xb3]).as_deref(), Some("12-3"));
        assert_eq!(decode(0, b"bin"), None);
    }

    #[test]
    fn damage_costs_only_the_damaged_area() {
        let mut data = fru(
            &area(&[0x17], &["CH-1", "CHS-9"]),
            &area(&[0, 0, 0, 0], &["Board Co", "X11", "BRD-7"]),
            &[],
        );
        // Break the chassis area's checksum: its serial goes, the board's stays.
        data[8 + 3] ^= 0xff;
        let f = parse(&data).unwrap();
        assert_eq!(f.chassis_serial, None);
        assert_eq!(f.serial().as_deref(), Some("BRD-7"));
        assert_eq!(parse(&data[..5]), Err(FruError::Short));
        let mut bad = data.clone();
        bad[7] ^= 1;
        assert_eq!(parse(&bad), Err(FruError::Checksum));
        assert_eq!(parse(&[0u8; 8]), Err(FruError::Version(0)));
    }

    #[test]
    fn no_input_panics() {
        // Every truncation and every single-byte change of a real layout, and noise.
        let data = fru(
            &area(&[0x17], &["CH-1", "CHS-9"]),
            &area(&[0, 0, 0, 0], &["Board Co", "X11", "BRD-7"]),
            &area(&[0], &["Vendor", "Server 1", "S1", "1.0", "SN-42"]),
        );
        for n in 0..=data.len() {
            let _ = parse(&data[..n]);
            let _ = info_areas(&data[..n]);
        }
        for i in 0..data.len() {
            for v in [0x00, 0x01, 0x3f, 0x7f, 0xc1, 0xff] {
                let mut d = data.clone();
                d[i] = v;
                let _ = parse(&d);
            }
        }
        let mut x = 0x12345678u32;
        for _ in 0..2000 {
            let d: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let mut d = d;
            d[0] = 1;
            let _ = parse(&d);
        }
    }
}
