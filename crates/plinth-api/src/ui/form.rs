//! Forms as browsers post them (application/x-www-form-urlencoded).

use std::collections::HashMap;

/// An `application/x-www-form-urlencoded` body as (name, value) pairs, repeated names kept.
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed form.
pub(crate) struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value, trimmed; None when absent or empty.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The fields as a map for re-rendering a form (passwords left out).
    pub fn echo(&self) -> HashMap<String, String> {
        self.0
            .iter()
            .filter(|(k, _)| !k.contains("password") && k != "_csrf")
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_like_browsers_encode() {
        let f = parse_form(b"a=1&b=x+y%2Fz&id=1&id=2&empty=&c=%E2%9C%93&bad=%zz&trail=%4");
        assert_eq!(
            f,
            [
                ("a", "1"),
                ("b", "x y/z"),
                ("id", "1"),
                ("id", "2"),
                ("empty", ""),
                ("c", "✓"),
                ("bad", "%zz"),
                ("trail", "%4")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
