//! One transfer's attempts: retried with backoff on what may pass (network
//! errors, stalls, 408, 429, 5xx), given up at once on what will not (other
//! 4xx), all within the transfer timeout.

use super::{StagingError, Transfers};
use std::future::Future;
use std::time::Duration;

/// The Blob service version the agent speaks (`Put Blob` up to 5,000 MiB).
pub(super) const BLOB_API_VERSION: &str = "2019-12-12";

/// How one attempt ended, when it did not succeed.
pub(super) enum Attempt {
    /// May pass: try again while retries are left (a node-side failure at the end).
    Retry(String),
    /// Will not pass.
    Fatal(StagingError),
}

/// A request error without the URL (reqwest's message names it, query and all).
pub(super) fn network(what: &str, e: reqwest::Error) -> Attempt {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    Attempt::Retry(format!("{what}: {msg}"))
}

/// The answer if it is a success; otherwise what its status means.
pub(super) fn check(what: &str, resp: reqwest::Response) -> Result<reqwest::Response, Attempt> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let msg = format!("{what}: HTTP {}{code}", status.as_u16());
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Err(Attempt::Retry(msg))
    } else {
        Err(Attempt::Fatal(StagingError::User(msg)))
    }
}

/// Runs `attempt` until it succeeds, fails for good, or retries and time run out.
pub(super) async fn retrying<T, F, Fut>(t: &Transfers, what: &str, mut attempt: F) -> Result<T, StagingError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let limits = t.limits();
    let run = async {
        let mut backoff = limits.retry_backoff;
        let mut left = limits.retries;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(msg)) if left == 0 => {
                    let tries = limits.retries + 1;
                    return Err(StagingError::Server(format!("{msg} (after {tries} attempts)")));
                }
                Err(Attempt::Retry(msg)) => {
                    tracing::warn!(error = %msg, retries_left = left, "transfer failed; retrying");
                    left -= 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    };
    match tokio::time::timeout(limits.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(StagingError::Server(format!("{what}: not done within {:?}", limits.timeout))),
    }
}

/// The next chunk of a body, or a stall after `stall` without a byte.
pub(super) async fn chunk(
    what: &str,
    resp: &mut reqwest::Response,
    stall: Duration,
) -> Result<Option<bytes::Bytes>, Attempt> {
    match tokio::time::timeout(stall, resp.chunk()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(network(what, e)),
        Err(_) => Err(Attempt::Retry(format!("{what}: no data for {stall:?}"))),
    }
}

/// Sends a GET (Blob API version set), waiting at most the stall timeout for
/// the answer's head; returns it if it is a success.
pub(super) async fn get(t: &Transfers, what: &str, url: url::Url) -> Result<reqwest::Response, Attempt> {
    let req = t.http().await.map_err(Attempt::Fatal)?.get(url).header("x-ms-version", BLOB_API_VERSION);
    let stall = t.limits.stall_timeout;
    let resp = tokio::time::timeout(stall, req.send())
        .await
        .map_err(|_| Attempt::Retry(format!("{what}: no answer for {stall:?}")))?;
    check(what, resp.map_err(|e| network(what, e))?)
}

/// Streams a body into `sink`, chunk by chunk, never holding it whole.
/// `room` is how many bytes may still come (past it: `too_big`, fatal);
/// `seen` gets the bytes so far after each chunk. Returns the body's size.
pub(super) async fn stream_body(
    t: &Transfers,
    what: &str,
    resp: &mut reqwest::Response,
    room: u64,
    too_big: impl Fn() -> StagingError,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    mut seen: impl FnMut(u64),
) -> Result<u64, Attempt> {
    let mut n = 0u64;
    while let Some(c) = chunk(what, resp, t.limits.stall_timeout).await? {
        n += c.len() as u64;
        if n > room {
            return Err(Attempt::Fatal(too_big()));
        }
        sink(&c).map_err(|e| Attempt::Fatal(StagingError::Server(format!("{what}: cannot write: {e}"))))?;
        seen(n);
    }
    Ok(n)
}
