//! A server-sent events parser (the WHATWG format), sans I/O: bytes in, messages out. Used
//! by [`Client::event_stream`](crate::Client::event_stream).

/// One message of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Collects lines across chunks and yields the complete messages.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    cur: Message,
    has_data: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
}

/// The longest line accepted: a stream that sends more without a newline is broken.
pub const MAX_LINE: usize = 1 << 20;

impl Parser {
    /// Feeds a chunk; returns the messages it completed. Err: a line longer than [`MAX_LINE`].
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<Message>, String> {
        let mut out = Vec::new();
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if b == b'\n' || b == b'\r' {
                self.buf.extend_from_slice(&chunk[start..i]);
                let line = std::mem::take(&mut self.buf);
                self.line(&line, &mut out);
                if b == b'\r' {
                    if i + 1 < chunk.len() {
                        if chunk[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.after_cr = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.buf.extend_from_slice(&chunk[start..]);
        if self.buf.len() > MAX_LINE {
            return Err(format!("an event stream line longer than {MAX_LINE} bytes"));
        }
        Ok(out)
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Message>) {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.cur));
            } else {
                self.cur = Message::default();
            }
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.cur.data.push('\n');
                }
                self.cur.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.cur.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.cur.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_across_chunks_and_line_endings() {
        let mut p = Parser::default();
        let mut got = Vec::new();
        for chunk in [
            &b": keep-alive\n\nretry: 2000\n\nid: 7\nevent: boot\nda"[..],
            b"ta: {\"a\":1}\r",
            b"\n\r\nid:8\r\ndata:x\ndata: y\n\n",
            b"data: unterminated",
        ] {
            got.extend(p.push(chunk).unwrap());
        }
        assert_eq!(
            got,
            vec![
                Message {
                    id: Some("7".into()),
                    event: Some("boot".into()),
                    data: "{\"a\":1}".into()
                },
                Message {
                    id: Some("8".into()),
                    event: None,
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = Parser::default();
        assert!(p.push(&vec![b'a'; MAX_LINE + 1]).is_err());
    }
}
