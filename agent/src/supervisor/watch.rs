//! `WatchTasks`: replay the event log after a sequence number, then follow live
//! events without a gap or a duplicate. The live subscription is taken before
//! the replay, and live events at or below the last replayed sequence are
//! skipped; if the feed lags, the gap is read back from the log.

use super::Error;
use crate::store::{Store, TaskEvent};
use tokio::sync::{broadcast, mpsc};

const PAGE: usize = 512;

pub(super) fn spawn(store: Store, from: u64) -> mpsc::Receiver<Result<TaskEvent, Error>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut live = store.subscribe();
        let mut last = from;
        // Resuming from a point the log no longer holds would silently skip
        // events: say so, so the client resyncs with ListTasks.
        if from > 0 {
            match store.event_range().await {
                Ok(Some((oldest, _))) if from.saturating_add(1) < oldest => {
                    let _ = tx.send(Err(Error::Compacted { from, oldest })).await;
                    return;
                }
                // Ahead of the log: it was reset (a lost database); resync.
                Ok(range) if from > range.map_or(0, |(_, newest)| newest) => {
                    let newest = range.map_or(0, |(_, newest)| newest);
                    let _ = tx.send(Err(Error::AheadOfLog { from, newest })).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                _ => {}
            }
        }
        // Replay, then follow; on lag, replay the gap again.
        loop {
            if replay(&store, &tx, &mut last).await.is_err() {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(ev) if ev.sequence <= last => continue,
                    Ok(ev) => {
                        last = ev.sequence;
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    rx
}

/// Sends every logged event after `last`; Err when the receiver is gone.
async fn replay(store: &Store, tx: &mpsc::Sender<Result<TaskEvent, Error>>, last: &mut u64) -> Result<(), ()> {
    loop {
        let page = match store.events_after(*last, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return Err(());
            }
        };
        let n = page.len();
        for ev in page {
            *last = ev.sequence;
            tx.send(Ok(ev)).await.map_err(drop)?;
        }
        if n < PAGE {
            return Ok(());
        }
    }
}
