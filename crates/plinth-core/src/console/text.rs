//! Console output made readable in one line of text: what a failure reason quotes.

use plinth_types::terminal::strip;

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

#[cfg(test)]
mod tests {
    use super::*;

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
