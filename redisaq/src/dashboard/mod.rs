//! The web dashboard (cargo feature `dashboard`): topics, partitions, groups, consumers,
//! dead letters, delayed jobs, schedules, pause and resume, as an axum [`Router`] over
//! [`Admin`]. Server-rendered HTML with a small vendored script (htmx) that refreshes the
//! page; no JavaScript build.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use redisaq::admin::Admin;
//! use redisaq::dashboard::{self, Options};
//!
//! let admin = Admin::connect("redis://127.0.0.1:6379").await?;
//! let app = dashboard::router(admin, Options::new().token("s3cret"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Nested in an app (`Router::new().nest("/ops", dashboard::router(admin, options))`),
//! its links, forms and redirects stay under `/ops`.
//!
//! Safe by default: reading needs no token; with a token set, every change needs it
//! (`Authorization: Bearer T` from scripts; the browser asks once and keeps it in a
//! cookie). Forms carry a per-browser value that must match a `SameSite=Strict` cookie,
//! so another site cannot post them. Payloads are hidden unless asked for.

mod auth;
mod pages;
mod rates;

use std::sync::Arc;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::admin::Admin;
use crate::JobId;

/// How the dashboard behaves.
///
/// ```
/// let options = redisaq::dashboard::Options::new()
///     .token("s3cret")
///     .read_only(false)
///     .show_payloads(false);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Options {
    token: Option<String>,
    read_only: bool,
    show_payloads: bool,
}

impl Options {
    /// Reading for everyone, changes for everyone, payloads hidden.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every change (replay, purge, pause, cancel) needs this token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into()).filter(|t| !t.is_empty());
        self
    }

    /// Show no change buttons and refuse every change.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Show job payloads (they may hold personal data).
    pub fn show_payloads(mut self, show_payloads: bool) -> Self {
        self.show_payloads = show_payloads;
        self
    }
}

/// What every handler shares.
struct Dashboard {
    admin: Admin,
    options: Options,
    rates: rates::Rates,
}

type Shared = State<Arc<Dashboard>>;

/// The dashboard as a router, to serve on its own or nest in an app.
pub fn router(admin: Admin, options: Options) -> Router {
    let state = Arc::new(Dashboard {
        admin,
        options,
        rates: rates::Rates::default(),
    });
    Router::new()
        .route("/", get(overview))
        .route("/schedules", get(schedules))
        .route("/topics/{topic}", get(topic))
        .route("/topics/{topic}/job", get(job))
        .route("/topics/{topic}/pause", post(pause))
        .route("/topics/{topic}/resume", post(resume))
        .route("/topics/{topic}/delayed/{id}/cancel", post(cancel))
        .route("/topics/{topic}/dead-letters", get(dead_letters))
        .route("/topics/{topic}/dead-letters/replay", post(replay))
        .route(
            "/topics/{topic}/dead-letters/purge",
            get(purge_confirm).post(purge),
        )
        .route("/topics/{topic}/dead-letters/{id}", get(dead_letter))
        .route("/login", get(login_page).post(login))
        .route("/assets/htmx.min.js", get(htmx))
        .with_state(state)
        .layer(axum::middleware::from_fn(mounted))
}

/// Answers the request knowing where the dashboard is mounted: nested in an app at
/// `/ops`, axum hands it `/topics/t` for `/ops/topics/t`, and its links, forms and
/// redirects must say `/ops/topics/t`.
async fn mounted(
    OriginalUri(original): OriginalUri,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let base = mount_point(original.path(), request.uri().path()).to_string();
    pages::BASE.scope(base, next.run(request)).await
}

/// The part of the path the app routed on before the dashboard's own (empty at the root).
fn mount_point<'a>(original: &'a str, own: &str) -> &'a str {
    match original.strip_suffix(own) {
        Some(base) => base,
        // Nested at `/ops`, the request for `/ops` itself is the dashboard's `/`.
        None if own == "/" => original.trim_end_matches('/'),
        None => "",
    }
}

/// A failed read or change, shown as a page.
struct Failure(StatusCode, String);

impl From<crate::Error> for Failure {
    fn from(error: crate::Error) -> Self {
        let status = match error {
            crate::Error::UnknownTopic(_) | crate::Error::UnknownGroup { .. } => {
                StatusCode::NOT_FOUND
            }
            crate::Error::AmbiguousId { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        Failure(status, error.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, pages::failure(self.0, &self.1)).into_response()
    }
}

type Page = Result<Response, Failure>;

/// A page, with the form cookie set if the browser has none yet.
fn page(headers: &HeaderMap, body: impl FnOnce(&str) -> maud::Markup) -> Response {
    let (csrf, fresh) = auth::form_value(headers);
    let mut response = body(&csrf).into_response();
    if fresh {
        auth::set_form_cookie(&mut response, &csrf);
    }
    response
}

fn view(state: &Dashboard) -> pages::View {
    pages::View {
        can_change: !state.options.read_only,
        show_payloads: state.options.show_payloads,
    }
}

async fn overview(State(state): Shared, headers: HeaderMap) -> Page {
    let topics = state.admin.topics().await?;
    let mut rows = Vec::with_capacity(topics.len());
    for topic in topics {
        let groups = state.admin.groups(&topic.topic).await.unwrap_or_default();
        let added: Option<u64> = topic.streams.iter().map(|s| s.added).sum();
        let rate = added.and_then(|added| state.rates.note(&topic.topic, added));
        rows.push((topic, groups, rate));
    }
    Ok(page(&headers, |_| pages::overview(&rows)))
}

async fn schedules(State(state): Shared, headers: HeaderMap) -> Page {
    let schedules = state.admin.schedules().await?;
    Ok(page(&headers, |_| pages::schedules(&schedules)))
}

async fn topic(State(state): Shared, Path(topic): Path<String>, headers: HeaderMap) -> Page {
    let status = state
        .admin
        .topics()
        .await?
        .into_iter()
        .find(|t| t.topic == topic)
        .ok_or_else(|| crate::Error::UnknownTopic(topic.clone()))?;
    let groups = state.admin.groups(&topic).await?;
    let mut consumers = Vec::with_capacity(groups.len());
    for group in &groups {
        let monitored = state
            .admin
            .monitor(&topic, &group.group, 60_000, 1_000)
            .await
            .unwrap_or_default();
        consumers.push((group.group.clone(), monitored));
    }
    let delayed = state.admin.delayed(&topic, 50).await?;
    let view = view(&state);
    Ok(page(&headers, |csrf| {
        pages::topic(&view, csrf, &status, &groups, &consumers, &delayed)
    }))
}

/// The job page's query.
#[derive(Debug, Deserialize)]
struct JobQuery {
    id: Option<String>,
}

async fn job(
    State(state): Shared,
    Path(topic): Path<String>,
    Query(query): Query<JobQuery>,
    headers: HeaderMap,
) -> Page {
    let id = query
        .id
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty());
    let status = match &id {
        Some(id) => Some(state.admin.job(&topic, &JobId::from(id.as_str())).await?),
        None => None,
    };
    Ok(page(&headers, |_| {
        pages::job(&topic, id.as_deref(), status.as_ref())
    }))
}

/// The dead-letter page's filters.
#[derive(Debug, Deserialize)]
struct LetterFilter {
    group: Option<String>,
    q: Option<String>,
}

async fn dead_letters(
    State(state): Shared,
    Path(topic): Path<String>,
    Query(filter): Query<LetterFilter>,
    headers: HeaderMap,
) -> Page {
    let group = filter.group.filter(|g| !g.is_empty());
    let search = filter.q.filter(|q| !q.trim().is_empty());
    let all = state.admin.dead_letters(&topic, None, 10_000).await?;
    let mut groups: Vec<String> = all.iter().map(|l| l.group.clone()).collect();
    groups.sort_unstable();
    groups.dedup();
    let letters: Vec<_> = all
        .into_iter()
        .filter(|l| group.as_ref().is_none_or(|g| &l.group == g))
        .filter(|l| {
            search.as_ref().is_none_or(|q| {
                l.id.as_str().contains(q.trim()) || l.dead_letter_id.contains(q.trim())
            })
        })
        .take(500)
        .collect();
    let view = view(&state);
    Ok(page(&headers, |csrf| {
        pages::dead_letters(
            &view,
            csrf,
            &topic,
            &groups,
            group.as_deref(),
            search.as_deref(),
            &letters,
        )
    }))
}

async fn dead_letter(
    State(state): Shared,
    Path((topic, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Page {
    let letter = state.admin.dead_letter(&topic, &id).await?.ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("no dead letter `{id}` on topic `{topic}`"),
        )
    })?;
    let view = view(&state);
    Ok(page(&headers, |csrf| {
        pages::dead_letter(&view, csrf, &topic, &letter)
    }))
}

async fn purge_confirm(
    State(state): Shared,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Page {
    let count = state
        .admin
        .dead_letters(&topic, None, usize::MAX)
        .await?
        .len();
    let view = view(&state);
    Ok(page(&headers, |csrf| {
        pages::purge_confirm(&view, csrf, &topic, count)
    }))
}

/// A form's fields, repeated ones (`ids`) included.
type Fields = Form<Vec<(String, String)>>;

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Where to go after a change: back to the page it came from, within the dashboard.
fn back(fields: &[(String, String)], default: String) -> Response {
    let to = field(fields, "back")
        .filter(|to| is_local_path(to))
        .map_or(default, str::to_string);
    Redirect::to(&to).into_response()
}

/// A path of this site: `/` then plain path characters, so no browser reads another
/// host into it (`//evil`, `/\evil`, control characters).
fn is_local_path(to: &str) -> bool {
    to.starts_with('/')
        && !to.starts_with("//")
        && to
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~%?=&+:@".contains(&b))
}

async fn replay(
    State(state): Shared,
    Path(topic): Path<String>,
    headers: HeaderMap,
    Form(fields): Fields,
) -> Page {
    auth::allow_change(&state.options, &headers, &fields)?;
    let ids: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "ids")
        .map(|(_, v)| v.clone())
        .collect();
    let all = field(&fields, "all").is_some();
    if ids.is_empty() && !all {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "select the dead letters to replay, or replay all".into(),
        ));
    }
    let group = field(&fields, "group");
    let replayed = state.admin.replay(&topic, group, &ids).await?;
    tracing::info!(%topic, count = replayed.len(), "dashboard: replayed dead letters");
    Ok(back(
        &fields,
        pages::at(&format!("/topics/{}/dead-letters", pages::seg(&topic))),
    ))
}

async fn purge(
    State(state): Shared,
    Path(topic): Path<String>,
    headers: HeaderMap,
    Form(fields): Fields,
) -> Page {
    auth::allow_change(&state.options, &headers, &fields)?;
    if field(&fields, "confirm") != Some("yes") {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "purging needs confirm=yes".into(),
        ));
    }
    let purged = state.admin.purge_dead_letters(&topic).await?;
    tracing::info!(%topic, purged, "dashboard: purged dead letters");
    let list = pages::at(&format!("/topics/{}/dead-letters", pages::seg(&topic)));
    Ok(Redirect::to(&list).into_response())
}

async fn pause(state: Shared, topic: Path<String>, headers: HeaderMap, fields: Fields) -> Page {
    set_paused(state, topic, headers, fields, true).await
}

async fn resume(state: Shared, topic: Path<String>, headers: HeaderMap, fields: Fields) -> Page {
    set_paused(state, topic, headers, fields, false).await
}

/// Pauses or resumes the topic, or the form's `group` on it.
async fn set_paused(
    State(state): Shared,
    Path(topic): Path<String>,
    headers: HeaderMap,
    Form(fields): Fields,
    paused: bool,
) -> Page {
    auth::allow_change(&state.options, &headers, &fields)?;
    let group = field(&fields, "group");
    if paused {
        state.admin.pause(&topic, group).await?;
    } else {
        state.admin.resume(&topic, group).await?;
    }
    Ok(back(
        &fields,
        pages::at(&format!("/topics/{}", pages::seg(&topic))),
    ))
}

async fn cancel(
    State(state): Shared,
    Path((topic, id)): Path<(String, String)>,
    headers: HeaderMap,
    Form(fields): Fields,
) -> Page {
    auth::allow_change(&state.options, &headers, &fields)?;
    state.admin.cancel(&topic, &JobId::from(id)).await?;
    Ok(back(
        &fields,
        pages::at(&format!("/topics/{}", pages::seg(&topic))),
    ))
}

/// The login page's query: where to go after.
#[derive(Debug, Deserialize)]
struct Next {
    next: Option<String>,
}

async fn login_page(
    State(state): Shared,
    Query(next): Query<Next>,
    headers: HeaderMap,
) -> Response {
    let next = next.next.unwrap_or_else(|| pages::at("/"));
    let needed = state.options.token.is_some();
    page(&headers, |csrf| pages::login(csrf, &next, needed, false))
}

async fn login(State(state): Shared, headers: HeaderMap, Form(fields): Fields) -> Response {
    let next = field(&fields, "back").map_or_else(|| pages::at("/"), str::to_string);
    if !auth::form_is_ours(&headers, &fields) {
        return auth::refused_form();
    }
    match (&state.options.token, field(&fields, "token")) {
        (Some(token), Some(given)) if auth::same(token, given) => {
            let mut response = back(&fields, pages::at("/"));
            auth::set_token_cookie(&mut response, token);
            response
        }
        (Some(_), _) => (
            StatusCode::UNAUTHORIZED,
            page(&headers, |csrf| pages::login(csrf, &next, true, true)),
        )
            .into_response(),
        (None, _) => back(&fields, pages::at("/")),
    }
}

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("assets/htmx.min.js"),
    )
}

#[cfg(test)]
mod tests {
    use super::{is_local_path, mount_point};

    #[test]
    fn the_mount_point_is_what_the_app_routed_on() {
        assert_eq!(mount_point("/topics/t", "/topics/t"), "");
        assert_eq!(mount_point("/", "/"), "");
        assert_eq!(mount_point("/ops/topics/t", "/topics/t"), "/ops");
        assert_eq!(mount_point("/ops", "/"), "/ops");
        assert_eq!(mount_point("/ops/", "/"), "/ops");
        assert_eq!(mount_point("/a/b/schedules", "/schedules"), "/a/b");
    }

    #[test]
    fn only_paths_of_this_site_are_followed() {
        for ok in ["/", "/topics/t/dead-letters", "/topics/t/job?id=a%2Fb"] {
            assert!(is_local_path(ok), "{ok}");
        }
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "/\t/evil.com",
            "https://evil.com",
            "evil",
            "",
        ] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }
}
