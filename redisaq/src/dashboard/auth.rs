//! Who may change what. Reading needs nothing. A change (a form post) needs:
//! - not `read_only`;
//! - with a token: `Authorization: Bearer <token>` (scripts), or the token cookie the
//!   login form sets (browsers);
//! - from a browser, the form's hidden `csrf` field equal to the `redisaq_csrf` cookie:
//!   another site can post a form but cannot read the cookie, and `SameSite=Strict`
//!   keeps the browser from sending it along from another site.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{field, Failure, Options};

const FORM_COOKIE: &str = "redisaq_csrf";
const TOKEN_COOKIE: &str = "redisaq_token";

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The browser's form value, or a new one (`true`: set it).
pub(super) fn form_value(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, FORM_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Some(value) => (value.to_string(), false),
        None => (format!("{:032x}", rand::random::<u128>()), true),
    }
}

fn set_cookie(response: &mut Response, name: &str, value: &str) {
    let cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

pub(super) fn set_form_cookie(response: &mut Response, value: &str) {
    set_cookie(response, FORM_COOKIE, value);
}

/// The cookie holds the token hex-encoded, so any token fits in a cookie.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn set_token_cookie(response: &mut Response, token: &str) {
    set_cookie(response, TOKEN_COOKIE, &hex(token));
}

/// Equal, compared in time that does not depend on where they differ.
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

/// Whether a posted form came from a page of this dashboard.
pub(super) fn form_is_ours(headers: &HeaderMap, fields: &[(String, String)]) -> bool {
    matches!(
        (cookie(headers, FORM_COOKIE), field(fields, "csrf")),
        (Some(cookie), Some(form)) if same(cookie, form)
    )
}

/// The failure of a form that did not come from a page of this dashboard.
fn not_ours() -> Failure {
    Failure(
        StatusCode::FORBIDDEN,
        "this form did not come from a page of this dashboard (or its page is too old): \
         reload the page and try again"
            .into(),
    )
}

pub(super) fn refused_form() -> Response {
    not_ours().into_response()
}

/// Whether the request names this machine by a loopback name or address.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    // Strip the port: `localhost:8080`, `[::1]:8080`, `127.0.0.1`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request may change anything; the failure says what is missing.
pub(super) fn allow_change(
    options: &Options,
    headers: &HeaderMap,
    fields: &[(String, String)],
) -> Result<(), Failure> {
    if options.read_only {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only (started with --read-only)".into(),
        ));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if options.token.is_none() && !loopback_host(headers) {
        // Without a token, only the machine itself may change things. A page of another
        // site that had its name point at 127.0.0.1 (DNS rebinding) reads as
        // same-origin to the browser, but still sends its own name as the Host.
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "without a token, changes are taken only from this machine (Host localhost, \
             127.0.0.1 or [::1]): start the dashboard with --token to change things from \
             elsewhere"
                .into(),
        ));
    }
    if let Some(token) = &options.token {
        if bearer.is_some_and(|given| same(token, given)) {
            return Ok(()); // a script: no cookies, so nothing to forge
        }
        let logged_in = cookie(headers, TOKEN_COOKIE).is_some_and(|c| same(c, &hex(token)));
        if !logged_in {
            return Err(Failure(
                StatusCode::UNAUTHORIZED,
                format!(
                    "changes need the dashboard token: log in ({}), or send \
                     `Authorization: Bearer <token>`",
                    super::pages::at("/login")
                ),
            ));
        }
    }
    if !form_is_ours(headers, fields) {
        return Err(not_ours());
    }
    Ok(())
}
