//! The request head the harness's small HTTP/1.1 servers read (the staging
//! sink, the token service): up to the blank line, with what came after it.

use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) struct Head {
    pub text: String,
    /// `Content-Length`, 0 when absent.
    pub content_length: usize,
    /// Body bytes read along with the head.
    pub rest: Vec<u8>,
}

impl Head {
    pub(crate) fn method(&self) -> &str {
        self.text.split_whitespace().next().unwrap_or("")
    }

    /// The request target, query included.
    pub(crate) fn target(&self) -> &str {
        self.text.split_whitespace().nth(1).unwrap_or("")
    }
}

/// Reads a request head of at most `max` bytes; None when the client went
/// away first or sent more.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(conn: &mut S, max: usize) -> Option<Head> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > max {
            return None;
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let content_length = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    Some(Head { text, content_length, rest: buf[end..].to_vec() })
}
