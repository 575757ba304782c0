//! One transfer's attempts: retried with backoff on what may pass (network
//! errors, stalls, 408, 429, 5xx), given up at once on what will not (other
//! 4xx), all within the transfer timeout.

use super::{StagingError, Transfers};
use std::future::Future;
use std::time::Duration;

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
