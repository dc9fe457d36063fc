//! The log's last line of defence: every line written to the log is scrubbed of every
//! secret the policy expanded from `${ENV}` (upstream keys, MCP server credentials),
//! whoever wrote it — Leash's own messages or a library's (rmcp logs request URLs with
//! their query strings when a connection fails).

use std::io::{self, Write};
use std::sync::RwLock;

use tracing_subscriber::fmt::MakeWriter;

/// Secrets to scrub, longest first.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shorter values are not scrubbed (they would mangle ordinary words); policy secrets
/// are keys and passwords, far longer.
const MIN_SECRET_LEN: usize = 6;

/// Registers secrets (and their URL-encoded spellings) to scrub from every later line.
pub fn register_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let Ok(mut known) = SECRETS.write() else {
        return;
    };
    for secret in secrets {
        for spelling in spellings(secret) {
            if spelling.len() >= MIN_SECRET_LEN && !known.contains(&spelling) {
                known.push(spelling);
            }
        }
    }
    known.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// The ways a secret may show up in a log line or an error: as written, and
/// percent-encoded (upper and lower case hex) or percent-decoded, as URLs quote it.
pub fn spellings(secret: &str) -> Vec<String> {
    let encoded = url_encoded(secret);
    vec![
        secret.to_string(),
        encoded.to_lowercase_hex(),
        encoded,
        url_decoded(secret),
    ]
}

/// `text` with every registered secret replaced by `[redacted]`.
pub fn scrub(text: &str) -> String {
    let Ok(known) = SECRETS.read() else {
        return text.to_string();
    };
    let mut out = text.to_string();
    for secret in known.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "[redacted]");
        }
    }
    out
}

/// `%2F` spelt `%2f`, as some clients encode.
trait LowercaseHex {
    fn to_lowercase_hex(&self) -> String;
}

impl LowercaseHex for String {
    fn to_lowercase_hex(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut rest = self.as_str();
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let escape = rest.get(at..at + 3).unwrap_or(&rest[at..]);
            out.push_str(&escape.to_ascii_lowercase());
            rest = &rest[at + escape.len()..];
        }
        out.push_str(rest);
        out
    }
}

fn url_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Standard error, scrubbed: use as the log's writer.
#[derive(Clone, Copy, Default)]
pub struct ScrubbedStderr;

impl<'a> MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubbedLine;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbedLine(Vec::new())
    }
}

/// One log event, buffered whole so that a secret cannot straddle two writes; scrubbed
/// and written to standard error when dropped.
pub struct ScrubbedLine(Vec<u8>);

impl Write for ScrubbedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = scrub(&String::from_utf8_lossy(&self.0));
        let _ = io::stderr().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_scrubbed_in_every_spelling() {
        register_secrets(["p@ss/w0rd-xyz", "abc"]);
        let line = scrub("url http://u:p%40ss%2Fw0rd-xyz@h/?k=p@ss/w0rd-xyz abc p%40ss%2fw0rd-xyz");
        assert_eq!(
            line,
            "url http://u:[redacted]@h/?k=[redacted] abc [redacted]"
        );
    }
}
