//! The Redis store (feature `redis`).

use std::{fmt, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Script,
};

use super::store::{
    Begin, BoxFuture, Fingerprint, IdempotencyStore, LockToken, RecordKey, StoreError,
    StoredResponse,
};
use crate::error::ConfigError;

/// Takes the lock with `SET NX PX`, or returns what is there and its remaining TTL.
const BEGIN: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";

/// Replaces the lock by the response, only if the lock is still ours (`L` + our token).
const COMPLETE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 17) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes the lock, only if it is still ours (`L` + our token).
const RELEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 17) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const LOCK: u8 = b'L';
const DONE: u8 = b'D';

/// Idempotency records in Redis, shared by every instance of a service.
///
/// One Redis key per record, `<prefix>{<sha256 hex>}`: the braces are a cluster hash tag, and
/// the hash covers the caller, the route and the client's key, which is never stored in clear.
/// The value is the lock (owner token and fingerprint) while the request is in flight, then the
/// stored response:
///
/// - **begin**: one Lua script runs `SET key lock NX PX <lock ttl>` and, when the key exists,
///   returns its value and `PTTL` atomically;
/// - **complete** and **release**: Lua scripts that check the lock is still held with this
///   request's token, then `SET .. PX <ttl>` or `DEL`. A request whose lock expired cannot
///   overwrite or delete the record of the retry that took it over.
///
/// Every key has a TTL. Each call is bounded by a [timeout](Self::timeout) (default 500 ms);
/// a timeout or a connection error is a [`StoreError`], which the layer turns into a 503 or
/// runs the request without idempotency, as configured. The connection is made lazily and
/// re-established by the [`ConnectionManager`], so a service starts while Redis is down.
///
/// A lock of a dropped or panicking request is released from a spawned tokio task; without a
/// runtime, it expires after the lock TTL.
///
/// Clones share the connection.
///
/// # Example
///
/// [`new`](Self::new) must run inside a tokio runtime; it does not connect.
///
/// ```
/// use std::time::Duration;
/// use tower_shield::idempotency::{IdempotencyLayer, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::new("redis://127.0.0.1:6379/0")?
///     .prefix("orders-api:idempotency:")
///     .timeout(Duration::from_millis(200));
/// // Every instance of the service given this store replays the same records.
/// let layer = IdempotencyLayer::new().with_store(store).required(true);
/// # let _ = layer;
///
/// assert!(RedisStore::new("http://127.0.0.1:6379").is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    manager: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

struct Scripts {
    begin: Script,
    complete: Script,
    release: Script,
}

impl RedisStore {
    /// Default per-call timeout.
    const TIMEOUT: Duration = Duration::from_millis(500);

    /// A store for the Redis at `url` (`redis://host:port/db`, `rediss://` with TLS support
    /// enabled in `redis`). Connects lazily, on the first request.
    ///
    /// # Errors
    ///
    /// When `url` is not a valid Redis URL.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the connection manager runs a task).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|e| ConfigError::new(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Self::TIMEOUT))
            .set_response_timeout(Some(Self::TIMEOUT))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ConfigError::new(format!("Redis connection manager: {e}")))?;
        Ok(Self::from_manager(manager))
    }

    /// A store on an existing connection manager.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self {
            manager,
            prefix: Arc::from("tower-shield:idempotency:"),
            timeout: Self::TIMEOUT,
            scripts: Arc::new(Scripts {
                begin: Script::new(BEGIN),
                complete: Script::new(COMPLETE),
                release: Script::new(RELEASE),
            }),
        }
    }

    /// The prefix of every key (default `tower-shield:idempotency:`). Stores that share a
    /// prefix share records.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The most a store call may take (default 500 ms); past it the call fails. The
    /// connection's own connect and response timeouts stay at 500 ms.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn key(&self, record: RecordKey) -> String {
        format!("{}{{{}}}", self.prefix, record.to_hex())
    }

    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError::new(what).with_source(error)),
            Err(_) => Err(StoreError::new(what).with_source("timed out")),
        }
    }
}

fn lock_value(token: LockToken, fingerprint: Fingerprint) -> Bytes {
    let mut value = BytesMut::with_capacity(1 + 16 + 32);
    value.put_u8(LOCK);
    value.put_slice(token.as_bytes());
    value.put_slice(fingerprint.as_bytes());
    value.freeze()
}

/// `L` + the token: how a lock is recognised as ours.
fn owner(token: LockToken) -> [u8; 17] {
    let mut owner = [LOCK; 17];
    owner[1..].copy_from_slice(token.as_bytes());
    owner
}

/// A TTL in milliseconds for `PX`/`PEXPIRE`, at least 1 and at most what Redis accepts (it adds
/// the TTL to its clock in a signed 64-bit number, and refuses a sum that overflows): a
/// `Duration::MAX` ("keep for ever") must not make every write fail.
fn millis(duration: Duration) -> u64 {
    const MAX: u64 = i64::MAX as u64 / 2;
    u64::try_from(duration.as_millis()).unwrap_or(MAX).clamp(1, MAX)
}

fn parse_existing(value: &[u8], pttl: i64) -> Result<Begin, StoreError> {
    match value.split_first() {
        Some((&LOCK, rest)) if rest.len() == 48 => {
            let fingerprint = Fingerprint::from_bytes(rest[16..].try_into().expect("32 bytes"));
            let expires_in = u64::try_from(pttl).ok().map(Duration::from_millis);
            Ok(Begin::InFlight { fingerprint, expires_in })
        }
        Some((&DONE, rest)) => {
            Ok(Begin::Completed(StoredResponse::decode(Bytes::copy_from_slice(rest))?))
        }
        _ => Err(StoreError::new("unrecognised idempotency record in Redis")),
    }
}

impl IdempotencyStore for RedisStore {
    fn begin(
        &self,
        key: RecordKey,
        fingerprint: Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<Result<Begin, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let token = LockToken::new();
            let redis_key = this.key(key);
            let mut conn = this.manager.clone();
            let mut invocation = this.scripts.begin.key(&redis_key);
            invocation.arg(&lock_value(token, fingerprint)[..]).arg(millis(lock_ttl));
            let existing: Option<(Vec<u8>, i64)> = this
                .bounded("idempotency begin failed", invocation.invoke_async(&mut conn))
                .await?;
            match existing {
                None => Ok(Begin::Acquired(token)),
                Some((value, pttl)) => parse_existing(&value, pttl),
            }
        })
    }

    fn complete(
        &self,
        key: RecordKey,
        token: LockToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<Result<bool, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let redis_key = this.key(key);
            let mut conn = this.manager.clone();
            let encoded = response.encode();
            let mut value = BytesMut::with_capacity(1 + encoded.len());
            value.put_u8(DONE);
            value.put_slice(&encoded);
            let mut invocation = this.scripts.complete.key(&redis_key);
            invocation.arg(&owner(token)[..]).arg(&value[..]).arg(millis(ttl));
            let stored: i64 = this
                .bounded("idempotency complete failed", invocation.invoke_async(&mut conn))
                .await?;
            Ok(stored == 1)
        })
    }

    fn release(&self, key: RecordKey, token: LockToken) -> BoxFuture<Result<(), StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let redis_key = this.key(key);
            let mut conn = this.manager.clone();
            let mut invocation = this.scripts.release.key(&redis_key);
            invocation.arg(&owner(token)[..]);
            let _: i64 = this
                .bounded("idempotency release failed", invocation.invoke_async(&mut conn))
                .await?;
            Ok(())
        })
    }

    fn release_on_drop(&self, key: RecordKey, token: LockToken) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let release = self.release(key, token);
                handle.spawn(async move {
                    if let Err(error) = release.await {
                        crate::observe::backend_failure("idempotency");
                        tracing::warn!(
                            target: "tower_shield::security",
                            event = "backend.failure",
                            backend = "idempotency",
                            key = %key.short(),
                            reason = %error,
                            "releasing a dropped request's lock failed; it expires after the lock TTL"
                        );
                    }
                });
            }
            Err(_) => tracing::warn!(
                target: "tower_shield::security",
                event = "backend.failure",
                backend = "idempotency",
                key = %key.short(),
                "no tokio runtime to release a dropped request's lock; it expires after the lock TTL"
            ),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
