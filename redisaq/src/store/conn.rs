//! Opening connections. Every long-lived connection is a `ConnectionManager`, which
//! reconnects by itself after a dropped connection or a Redis restart; callers see the
//! failed command's error and try again.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo};

use crate::error::Error;

/// The connection everything but the blocking reads shares. Today one Redis node's
/// reconnecting connection; the seam where a Redis Cluster connection goes.
pub(crate) type Conn = ConnectionManager;

/// Where the CA to trust for `rediss://` is named, beside the system's roots.
pub(crate) const TLS_CA_FILE: &str = "REDISAQ_TLS_CA_FILE";

/// Parses the URL (`redis://`, `rediss://` for TLS, with user and password as the
/// `redis` crate accepts them). For `rediss://`, the server's certificate is checked
/// against the system's roots and, if `REDISAQ_TLS_CA_FILE` names one, that CA.
pub(crate) fn client(url: &str) -> Result<Client, Error> {
    crate::keys::check_prefix().map_err(Error::config)?;
    let invalid = |e: redis::RedisError| {
        Error::config(format!(
            "REDIS_URL {:?} is not a valid Redis URL ({e}); expected e.g. \
             redis://127.0.0.1:6379 or rediss://user:password@host:6380/0",
            redact(url)
        ))
    };
    if !url.starts_with("rediss://") {
        return Client::open(url).map_err(invalid);
    }
    // rustls needs one process-wide crypto provider; keep any the application chose.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(ca_file) = std::env::var_os(TLS_CA_FILE).filter(|v| !v.is_empty()) else {
        return Client::open(url).map_err(invalid);
    };
    let roots = trusted_roots(std::path::Path::new(&ca_file))?;
    let info = url.into_connection_info().map_err(invalid)?;
    Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(roots),
        },
    )
    .map_err(|e| Error::config(format!("{TLS_CA_FILE}={ca_file:?}: {e}")))
}

/// The CA file's certificates and the system's, as one PEM bundle (a CA given to the
/// `redis` crate replaces the system's roots; we want both).
fn trusted_roots(ca_file: &std::path::Path) -> Result<Vec<u8>, Error> {
    let mut bundle = std::fs::read(ca_file).map_err(|e| {
        Error::config(format!(
            "{TLS_CA_FILE}={ca_file:?} cannot be read ({e}); name a PEM file with the CA \
             certificate that signed your Redis server's certificate"
        ))
    })?;
    if !String::from_utf8_lossy(&bundle).contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::config(format!(
            "{TLS_CA_FILE}={ca_file:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    bundle.push(b'\n');
    for cert in rustls_native_certs::load_native_certs().certs {
        let pem = pem::Pem::new("CERTIFICATE", cert.as_ref().to_vec());
        bundle.extend_from_slice(pem::encode(&pem).as_bytes());
    }
    Ok(bundle)
}

/// A connection whose commands may take up to `response_timeout` (blocking reads need
/// more than the default). It connects on first use and reconnects after a dropped
/// connection or a Redis restart; until then its commands fail with errors for which
/// [`is_transient`] holds, and the caller tries again.
pub(crate) fn manager(
    client: &Client,
    response_timeout: Duration,
) -> Result<ConnectionManager, Error> {
    manager_with_retries(client, response_timeout, 6)
}

/// [`manager`] with `retries` reconnect attempts per failed command.
pub(crate) fn manager_with_retries(
    client: &Client,
    response_timeout: Duration,
    retries: usize,
) -> Result<ConnectionManager, Error> {
    Ok(ConnectionManager::new_lazy_with_config(
        client.clone(),
        config(response_timeout, retries),
    )?)
}

/// Whether a failed command may succeed when tried again: the connection dropped, timed
/// out or could not be made, or Redis is loading, busy, failing over or full.
pub(crate) fn is_transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_connection_refusal()
        || matches!(
            error.code(),
            Some(
                "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY" | "OOM"
            )
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
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    };
    // A password may also come as a query parameter.
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

/// Whether the server takes script flags (`#!lua flags=...`, Redis 7.0 and later).
pub(crate) async fn takes_script_flags(
    conn: &mut impl redis::aio::ConnectionLike,
) -> Result<bool, Error> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let major = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok())
        .unwrap_or(0);
    Ok(major >= 7)
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
        assert_eq!(
            super::redact("redis://h:1/0?db=2&password=secret"),
            "redis://h:1/0?db=2&password=***"
        );
    }

    #[test]
    fn a_worker_shows_no_password_in_debug() {
        let worker = crate::Worker::new().redis_url("redis://u:secret@h:1/0");
        let shown = format!("{worker:?}");
        assert!(
            !shown.contains("secret") && shown.contains("***"),
            "{shown}"
        );
        let config = crate::config::Config::resolve(&crate::config::Overrides {
            redis_url: Some(crate::config::RedisUrl("rediss://:secret@h:1".into())),
            ..Default::default()
        })
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
