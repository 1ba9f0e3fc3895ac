//! Console output made readable in one line of text: what a failure reason quotes.

/// The last `lines` non-empty lines of console output, with terminal escape sequences and
/// control characters removed, invalid UTF-8 replaced, each line trimmed, and the whole at
/// most `max_chars` characters (the oldest lines dropped first, then the oldest characters).
pub fn last_lines(bytes: &[u8], lines: usize, max_chars: usize) -> Vec<String> {
    let clean = strip(bytes);
    let text = String::from_utf8_lossy(&clean);
    let mut out: Vec<String> = text
        .split('\n')
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let skip = out.len().saturating_sub(lines);
    out.drain(..skip);
    while out.len() > 1 && out.iter().map(|l| l.chars().count()).sum::<usize>() > max_chars {
        out.remove(0);
    }
    if let Some(l) = out.first_mut() {
        let n = l.chars().count();
        if n > max_chars {
            *l = l.chars().skip(n - max_chars).collect();
        }
    }
    out
}

/// Removes ANSI/VT escape sequences (CSI, OSC, DCS and two-byte escapes) and control bytes
/// other than newline and tab; a carriage return ends a line like a newline.
pub fn strip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            0x1b => {
                i += 1;
                match b.get(i) {
                    Some(b'[') => {
                        // CSI: parameters and intermediates, then a final byte 0x40-0x7e.
                        i += 1;
                        while i < b.len() && !(0x40..=0x7e).contains(&b[i]) {
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(b']' | b'P' | b'X' | b'^' | b'_') => {
                        // A string, ended by BEL or ST (ESC \).
                        i += 1;
                        while i < b.len() {
                            if b[i] == 0x07 {
                                i += 1;
                                break;
                            }
                            if b[i] == 0x1b && b.get(i + 1) == Some(&b'\\') {
                                i += 2;
                                break;
                            }
                            i += 1;
                        }
                    }
                    Some(_) => i += 1,
                    None => {}
                }
            }
            b'\n' | b'\t' => {
                out.push(c);
                i += 1;
            }
            b'\r' => {
                out.push(b'\n');
                i += 1;
            }
            0..=0x1f | 0x7f => i += 1,
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_go() {
        let raw = b"\x1b[0m\x1b[1;32mOK\x1b[0m booted\r\n\x1b]0;title\x07tty\x08\x00S0\x1bc\r\n";
        assert_eq!(
            String::from_utf8(strip(raw)).unwrap(),
            "OK booted\n\nttyS0\n\n"
        );
    }

    #[test]
    fn the_last_lines_bounded() {
        let raw = b"[    0.1] one\r\n[    0.2] two\r\n\r\n[    0.3] three\r\n[    9.9] Kernel panic - not syncing: VFS\xff";
        assert_eq!(
            last_lines(raw, 3, 1000),
            vec![
                "[    0.2] two",
                "[    0.3] three",
                "[    9.9] Kernel panic - not syncing: VFS\u{fffd}"
            ]
        );
        // Too long: the oldest lines go first, then the oldest characters of the last one.
        assert_eq!(last_lines(raw, 3, 45).len(), 1);
        assert_eq!(last_lines(raw, 3, 10), vec!["cing: VFS\u{fffd}"]);
        assert!(last_lines(b"\x1b[2J\r\n\r\n", 3, 100).is_empty());
    }
}
