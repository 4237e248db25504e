//! One connection to the server, made again after a fault. herd keeps two: one for the
//! blocking reads (`XREADGROUP ... BLOCK` holds its connection until it answers) and one for
//! everything else (settles, touches, claims, numbers), which many tasks share, pipelined.
//!
//! A command that fails for a connection reason (I/O, a reply that did not come in time)
//! drops the connection; the next command makes a new one. The connection state is what
//! status shows and what the logs announce, once per outage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

use crate::held::{bump, Shared};

/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Link {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// The connection and its number (a fault reported against an older one is stale).
    conn: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    made: AtomicU64,
    shared: Arc<Shared>,
    /// Whether this link's connection is up, and the other link's: the daemon is connected
    /// when both are.
    up: Arc<AtomicBool>,
    peer: Arc<AtomicBool>,
}

/// Whether an error is the connection's (drop it and make a new one) rather than the
/// server's answer to the command.
pub(crate) fn is_connection_fault(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Whether the server is starting (loading its data) or busy with a script: worth waiting.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(
            redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::TryAgain
        )
    ) || e.code() == Some("BUSY")
}

impl Link {
    /// A link whose replies may take `response` at most (a blocking read's wait included).
    pub fn new(
        client: redis::Client,
        response: Duration,
        shared: Arc<Shared>,
        up: Arc<AtomicBool>,
        peer: Arc<AtomicBool>,
    ) -> Self {
        Self {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response)),
            conn: tokio::sync::Mutex::new(None),
            made: AtomicU64::new(0),
            shared,
            up,
            peer,
        }
    }

    /// The connection, made now if there is none, with its number (for [`Link::fault`]).
    ///
    /// # Errors
    /// The connection cannot be made.
    pub async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some((n, c)) = slot.as_ref() {
            return Ok((*n, c.clone()));
        }
        let made = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await;
        match made {
            Ok(c) => {
                let n = self.made.fetch_add(1, Ordering::Relaxed) + 1;
                *slot = Some((n, c.clone()));
                drop(slot);
                self.set_up(true);
                Ok((n, c))
            }
            Err(e) => {
                drop(slot);
                self.set_up(false);
                Err(e)
            }
        }
    }

    /// Reports a failed command on connection `n`: a connection fault drops it. Counts the
    /// error either way.
    pub async fn fault(&self, n: u64, e: &RedisError) {
        bump(&self.shared.counters.errors);
        if !is_connection_fault(e) {
            return;
        }
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|(m, _)| *m == n) {
            *slot = None;
            drop(slot);
            self.set_up(false);
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        let both = up && self.peer.load(Ordering::Relaxed);
        let was = self.shared.connected.swap(both, Ordering::Relaxed);
        if both && !was {
            tracing::info!(held = self.shared.len(), "Redis connected");
        } else if was && !both {
            tracing::warn!(
                held = self.shared.len(),
                "Redis disconnected: intake paused until the connection is back"
            );
        }
    }
}
