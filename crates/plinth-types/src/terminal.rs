//! Terminal output as text: a serial console's bytes without their escape sequences, for what
//! people read (a failure reason quoting a console's last lines) and what tests look for in one.

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

/// [`strip`] of `text`, as text: what a person reading the console would see.
pub fn plain(text: &str) -> String {
    String::from_utf8_lossy(&strip(text.as_bytes())).into_owned()
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

    /// ISOLINUX moves the cursor inside words ("imag", two moves, "e"): a search for a phrase
    /// looks at the plain text, not the bytes.
    #[test]
    fn plain_text_drops_the_cursor_moves_isolinux_prints_inside_words() {
        assert_eq!(
            plain("\u{1b}[0;1miPXE\u{1b}[0m ISO boot imag\u{1b}[05;18H\u{1b}[05;19He\n"),
            "iPXE ISO boot image\n"
        );
        assert_eq!(plain("no escapes\n"), "no escapes\n");
        // A sequence cut off at the end of what was read so far.
        assert_eq!(plain("text\u{1b}[0;3"), "text");
    }
}
