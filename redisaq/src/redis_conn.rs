//! Opening connections. Every long-lived connection is a `ConnectionManager`, which
//! reconnects by itself after a dropped connection or a Redis restart; callers see the
//! failed command's error and try again.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Client;

use crate::error::Error;

/// Parses the URL (`redis://`, `rediss://` for TLS, with user and password as the
/// `redis` crate accepts them).
pub(crate) fn client(url: &str) -> Result<Client, Error> {
    Client::open(url).map_err(|e| {
        Error::config(format!(
            "REDIS_URL {:?} is not a valid Redis URL ({e}); expected e.g. \
             redis://127.0.0.1:6379 or rediss://user:password@host:6380/0",
            redact(url)
        ))
    })
}

/// A connection whose commands may take up to `response_timeout` (blocking reads need
/// more than the default). It connects on first use and reconnects after a dropped
/// connection or a Redis restart; until then its commands fail with errors for which
/// [`is_transient`] holds, and the caller tries again.
pub(crate) fn manager(
    client: &Client,
    response_timeout: Duration,
) -> Result<ConnectionManager, Error> {
    Ok(ConnectionManager::new_lazy_with_config(
        client.clone(),
        config(response_timeout, 6),
    )?)
}

/// Whether a failed command may succeed when tried again: the connection dropped, timed
/// out or could not be made, or Redis is loading, busy or failing over.
pub(crate) fn is_transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_connection_refusal()
        || matches!(
            error.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY")
        )
}

/// A connection for one-off tools: fails at once when nothing answers.
pub(crate) async fn quick_manager(client: &Client) -> Result<ConnectionManager, Error> {
    connect(client, Duration::from_secs(10), 0).await
}

async fn connect(
    client: &Client,
    response_timeout: Duration,
    retries: usize,
) -> Result<ConnectionManager, Error> {
    Ok(
        ConnectionManager::new_with_config(client.clone(), config(response_timeout, retries))
            .await?,
    )
}

fn config(response_timeout: Duration, retries: usize) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(retries)
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(super::redact("redis://h:1"), "redis://h:1");
    }
}
