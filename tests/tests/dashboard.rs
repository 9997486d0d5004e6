//! The web dashboard over HTTP against a real Redis with a real worker: each page's
//! content; replay, purge, pause and cancel with and without the token, from a form of
//! the dashboard and from elsewhere; read-only; payloads hidden unless asked for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use redisaq::admin::{Admin, JobState};
use redisaq::dashboard::{self, Options};
use redisaq::{job, EnqueueOptions, Job, JobError};
use redisaq_tests::{eventually, redis, test_worker, Background, Calls, Hold, Work};
use tower::ServiceExt;

static FAIL: AtomicBool = AtomicBool::new(true);
static RAN: Calls<u64> = Calls::new();

#[job(topic = "dash", group = "dash_group", partitions = 2, retries = 0)]
async fn dash(job: Job<Work>) -> Result<(), JobError> {
    let n = job.payload().n;
    if FAIL.load(Ordering::SeqCst) && n % 2 == 1 {
        return Err(JobError::fatal(format!("card {n} declined")));
    }
    RAN.push(n);
    Ok(())
}

struct Page {
    status: StatusCode,
    body: String,
    cookies: Vec<String>,
    location: Option<String>,
}

async fn send(app: &axum::Router, request: Request<Body>) -> Page {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cookies = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    Page {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        cookies,
        location,
    }
}

async fn get(app: &axum::Router, path: &str) -> Page {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

/// A form post with these cookies and fields (form-encoded).
async fn post(
    app: &axum::Router,
    path: &str,
    cookies: &[String],
    fields: &[(&str, &str)],
    bearer: Option<&str>,
) -> Page {
    let body: String = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.replace('%', "%25")
                    .replace('&', "%26")
                    .replace('=', "%3D")
                    .replace(' ', "+")
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let mut request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "127.0.0.1:8080");
    if !cookies.is_empty() {
        request = request.header(header::COOKIE, cookies.join("; "));
    }
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    send(app, request.body(Body::from(body)).unwrap()).await
}

/// The form cookie a page set, and its value as the forms carry it.
fn form_cookie(page: &Page) -> (String, String) {
    let cookie = page
        .cookies
        .iter()
        .find(|c| c.starts_with("redisaq_csrf="))
        .expect("the page sets the form cookie")
        .clone();
    let value = cookie.trim_start_matches("redisaq_csrf=").to_string();
    assert!(
        page.body.contains(&format!("value=\"{value}\"")) || !page.body.contains("name=\"csrf\"")
    );
    (cookie, value)
}

async fn dead_letter_count(admin: &Admin) -> usize {
    admin.dead_letters("dash", None, 1000).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_the_topic_and_changes_need_a_form_of_ours_and_the_token() {
    let worker = Background::start(test_worker(&["dash"]));
    let admin = Admin::connect(&redis().url()).await.unwrap();
    let ids = dash::enqueue_batch((0..6).map(|n| Work { n }))
        .await
        .unwrap();
    let settled = eventually(Duration::from_secs(30), || RAN.len() == 3).await;
    assert!(settled, "the good jobs ran");
    let dead = eventually(Duration::from_secs(30), || {
        futures_lite(admin.dead_letters("dash", None, 100)).len() == 3
    })
    .await;
    assert!(dead, "three dead letters");
    let delayed = dash::enqueue_with(
        Work { n: 100 },
        EnqueueOptions::new().delay(Duration::from_secs(600)),
    )
    .await
    .unwrap();

    let open = dashboard::router(admin.clone(), Options::new());
    // Overview, topic, dead letters, one dead letter, schedules.
    let overview = get(&open, "/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview.body.contains("href=\"/topics/dash\""),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("htmx.min.js"));
    let topic = get(&open, "/topics/dash").await;
    assert_eq!(topic.status, StatusCode::OK);
    for needle in [
        "dash_group",
        "Consumers of dash_group",
        delayed.as_str(),
        "3 dead letters",
        "Pause",
    ] {
        assert!(
            topic.body.contains(needle),
            "topic page lacks {needle}: {}",
            topic.body
        );
    }
    let letters = get(&open, "/topics/dash/dead-letters").await;
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            letters.body.contains(id.as_str()),
            n % 2 == 1,
            "dead letter {id}"
        );
    }
    let one = admin.dead_letters("dash", None, 100).await.unwrap()[0].clone();
    let filtered = get(&open, &format!("/topics/dash/dead-letters?q={}", one.id)).await;
    assert_eq!(
        filtered.body.matches("name=\"ids\"").count(),
        1,
        "the search finds one"
    );
    let shown = get(&open, &format!("/topics/dash/dead-letters/{}", one.id)).await;
    assert!(shown.body.contains("declined"), "the error is shown");
    assert!(
        shown.body.contains("Hidden") && !shown.body.contains(&one.payload),
        "payloads are hidden"
    );
    let with_payloads = dashboard::router(admin.clone(), Options::new().show_payloads(true));
    let shown = get(
        &with_payloads,
        &format!("/topics/dash/dead-letters/{}", one.id),
    )
    .await;
    let escaped = one
        .payload
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    assert!(shown.body.contains(&escaped), "{}", shown.body);
    assert_eq!(
        get(&open, "/topics/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&open, "/schedules").await.status, StatusCode::OK);

    // Where a job is: done in its group, delayed, dead-lettered, nowhere.
    let processed = admin.job("dash", &ids[0]).await.unwrap();
    assert_eq!(processed.groups.len(), 1, "{processed:?}");
    assert_eq!(processed.groups[0].state, redisaq::admin::JobState::Done);
    assert!(processed.entry_id.is_some() && processed.dead_letters.is_empty());
    let waiting = admin.job("dash", &delayed).await.unwrap();
    assert!(
        waiting.due_ms.is_some() && waiting.entry_id.is_none(),
        "{waiting:?}"
    );
    let failed = admin.job("dash", &ids[1]).await.unwrap();
    assert_eq!(failed.dead_letters.len(), 1, "{failed:?}");
    assert!(!admin
        .job("dash", &redisaq::JobId::from("nope"))
        .await
        .unwrap()
        .found());
    let found = get(&open, &format!("/topics/dash/job?id={}", ids[0])).await;
    assert!(
        found.body.contains("done") && found.body.contains("dash_group"),
        "{}",
        found.body
    );
    let found = get(&open, &format!("/topics/dash/job?id={delayed}")).await;
    assert!(found.body.contains("due in"), "{}", found.body);
    let found = get(&open, &format!("/topics/dash/job?id={}", ids[1])).await;
    assert!(found.body.contains("declined"), "{}", found.body);
    let found = get(&open, "/topics/dash/job?id=nope").await;
    assert!(found.body.contains("is not in dash"), "{}", found.body);

    // A change from elsewhere (no form cookie) is refused; from our form it works.
    let (cookie, csrf) = form_cookie(&letters);
    let ours = [cookie.clone()];
    // Job ids: dead-letter ids are entry ids of per-partition streams and may repeat.
    let id = one.id.as_str();
    let forged = post(
        &open,
        "/topics/dash/dead-letters/replay",
        &[],
        &[("ids", id), ("csrf", "x")],
        None,
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let wrong = post(
        &open,
        "/topics/dash/dead-letters/replay",
        &ours,
        &[("ids", id), ("csrf", "0123")],
        None,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(
        dead_letter_count(&admin).await,
        3,
        "nothing replayed by refused posts"
    );
    // A page of another site whose name points here (DNS rebinding) sends its own Host:
    // without a token, changes come only from this machine.
    let rebound = send(
        &open,
        Request::post("/topics/dash/dead-letters/replay")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::HOST, "evil.example:8080")
            .header(header::COOKIE, cookie.clone())
            .body(Body::from(format!("ids={id}&csrf={csrf}")))
            .unwrap(),
    )
    .await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN, "{}", rebound.body);
    assert_eq!(dead_letter_count(&admin).await, 3);
    FAIL.store(false, Ordering::SeqCst);
    let replayed = post(
        &open,
        "/topics/dash/dead-letters/replay",
        &ours,
        &[("ids", id), ("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER, "{}", replayed.body);
    assert_eq!(
        replayed.location.as_deref(),
        Some("/topics/dash/dead-letters")
    );
    assert_eq!(
        dead_letter_count(&admin).await,
        2,
        "the replayed dead letter is gone"
    );
    let n: u64 = serde_json::from_str::<Work>(&one.payload).unwrap().n;
    assert!(
        eventually(Duration::from_secs(30), || RAN.all().contains(&n)).await,
        "the replayed job ran"
    );

    // With a token: forms of ours still need it; a script sends it as a Bearer header.
    let guarded = dashboard::router(admin.clone(), Options::new().token("s3cret"));
    let no_token = post(
        &guarded,
        "/topics/dash/pause",
        &ours,
        &[("group", "dash_group"), ("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert!(!admin.groups("dash").await.unwrap()[0].paused);
    let bad_login = post(
        &guarded,
        "/login",
        &ours,
        &[("token", "guess"), ("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(bad_login.status, StatusCode::UNAUTHORIZED);
    assert!(!bad_login.body.contains("s3cret"), "the token never shows");
    let login = post(
        &guarded,
        "/login",
        &ours,
        &[
            ("token", "s3cret"),
            ("csrf", &csrf),
            ("back", "/topics/dash"),
        ],
        None,
    )
    .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let token_cookie = login
        .cookies
        .iter()
        .find(|c| c.starts_with("redisaq_token="))
        .expect("a token cookie")
        .clone();
    let paused = post(
        &guarded,
        "/topics/dash/pause",
        &[cookie.clone(), token_cookie.clone()],
        &[("group", "dash_group"), ("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER, "{}", paused.body);
    assert!(admin.groups("dash").await.unwrap()[0].paused);
    let script = post(
        &guarded,
        "/topics/dash/resume",
        &[],
        &[("group", "dash_group")],
        Some("s3cret"),
    )
    .await;
    assert_eq!(script.status, StatusCode::SEE_OTHER);
    assert!(!admin.groups("dash").await.unwrap()[0].paused);
    let bad_bearer = post(&guarded, "/topics/dash/resume", &[], &[], Some("guess")).await;
    assert_eq!(bad_bearer.status, StatusCode::UNAUTHORIZED);
    let cancelled = post(
        &guarded,
        &format!("/topics/dash/delayed/{delayed}/cancel"),
        &[],
        &[],
        Some("s3cret"),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::SEE_OTHER);
    assert!(
        admin.delayed("dash", 10).await.unwrap().is_empty(),
        "the delayed job was cancelled"
    );
    // An id with `/` and `?` in it gets a cancel form that reaches it.
    let odd = dash::enqueue_with(
        Work { n: 101 },
        EnqueueOptions::new()
            .id("order/7?x")
            .delay(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    let page = get(&open, "/topics/dash").await;
    let action = "/topics/dash/delayed/order%2F7%3Fx/cancel";
    assert!(page.body.contains(action), "{}", page.body);
    let cancelled = post(&open, action, &ours, &[("csrf", &csrf)], None).await;
    assert_eq!(
        cancelled.status,
        StatusCode::SEE_OTHER,
        "{}",
        cancelled.body
    );
    assert!(!admin.job("dash", &odd).await.unwrap().found());

    // Read-only: no buttons, and every change refused.
    let read_only = dashboard::router(admin.clone(), Options::new().read_only(true));
    let page = get(&read_only, "/topics/dash/dead-letters").await;
    assert!(
        !page.body.contains("Replay") && !page.body.contains("Purge"),
        "{}",
        page.body
    );
    let refused = post(
        &read_only,
        "/topics/dash/dead-letters/purge",
        &ours,
        &[("confirm", "yes"), ("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(dead_letter_count(&admin).await, 2);

    // Purge: a confirmation page, then the post.
    let confirm = get(&open, "/topics/dash/dead-letters/purge").await;
    assert!(
        confirm.body.contains("Purge 2 dead letters"),
        "{}",
        confirm.body
    );
    let unconfirmed = post(
        &open,
        "/topics/dash/dead-letters/purge",
        &ours,
        &[("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(unconfirmed.status, StatusCode::BAD_REQUEST);
    // With a token, replay and purge need it too.
    let replay_no_token = post(
        &guarded,
        "/topics/dash/dead-letters/replay",
        &ours,
        &[("all", "1"), ("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(replay_no_token.status, StatusCode::UNAUTHORIZED);
    let purge_no_token = post(
        &guarded,
        "/topics/dash/dead-letters/purge",
        &ours,
        &[("confirm", "yes"), ("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(purge_no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        dead_letter_count(&admin).await,
        2,
        "nothing replayed or purged without the token"
    );
    let purged = post(
        &guarded,
        "/topics/dash/dead-letters/purge",
        &[],
        &[("confirm", "yes")],
        Some("s3cret"),
    )
    .await;
    assert_eq!(purged.status, StatusCode::SEE_OTHER);
    assert_eq!(dead_letter_count(&admin).await, 0);
    worker.stop().await.unwrap();
}

/// Runs an admin read from a synchronous check.
fn futures_lite<T>(future: impl std::future::Future<Output = Result<T, redisaq::Error>>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future)).unwrap()
}

#[job(topic = "dash_nested", group = "dash_nested_group")]
async fn dash_nested(_job: Job<u64>) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_in_an_app_its_links_forms_and_redirects_stay_under_the_mount_point() {
    redisaq_tests::setup();
    dash_nested::enqueue(1).await.unwrap();
    let admin = Admin::connect(&redis().url()).await.unwrap();
    let app = axum::Router::new().nest("/ops", dashboard::router(admin.clone(), Options::new()));

    for root in ["/ops", "/ops/schedules"] {
        let overview = get(&app, root).await;
        assert_eq!(overview.status, StatusCode::OK, "{root}");
        for link in [
            r#"src="/ops/assets/htmx.min.js""#,
            r#"href="/ops/schedules""#,
            r#"href="/ops""#,
        ] {
            assert!(overview.body.contains(link), "{root} has {link}");
        }
        assert!(!overview.body.contains(r#"href="/topics/"#), "{root}");
    }
    assert!(get(&app, "/ops")
        .await
        .body
        .contains(r#"href="/ops/topics/dash_nested""#));
    assert_eq!(
        get(&app, "/ops/assets/htmx.min.js").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/topics/dash_nested").await.status,
        StatusCode::NOT_FOUND
    );

    let topic = get(&app, "/ops/topics/dash_nested").await;
    assert_eq!(topic.status, StatusCode::OK, "{}", topic.body);
    assert!(
        topic
            .body
            .contains(r#"action="/ops/topics/dash_nested/pause""#),
        "{}",
        topic.body
    );
    assert!(topic.body.contains(r#"value="/ops/topics/dash_nested""#));
    let (cookie, csrf) = form_cookie(&topic);
    // As the page's form posts it, and with no way back given.
    let paused = post(
        &app,
        "/ops/topics/dash_nested/pause",
        std::slice::from_ref(&cookie),
        &[("csrf", &csrf), ("back", "/ops/topics/dash_nested")],
        None,
    )
    .await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER, "{}", paused.body);
    assert_eq!(paused.location.as_deref(), Some("/ops/topics/dash_nested"));
    assert!(admin
        .topics()
        .await
        .unwrap()
        .iter()
        .any(|t| t.topic == "dash_nested" && t.paused));
    let resumed = post(
        &app,
        "/ops/topics/dash_nested/resume",
        &[cookie],
        &[("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(resumed.status, StatusCode::SEE_OTHER, "{}", resumed.body);
    assert_eq!(resumed.location.as_deref(), Some("/ops/topics/dash_nested"));
}

static WHERE_HOLD: Hold = Hold::new();

#[job(topic = "dash_where", group = "dash_where_group", retries = 3)]
async fn dash_where(job: Job<u64>) -> Result<(), JobError> {
    if *job.payload() == 0 {
        WHERE_HOLD.hold().await;
        return Ok(());
    }
    Err(JobError::retry("not yet"))
}

/// The group's state of a job, once `Admin::job` finds it in the group.
async fn state_in_group(admin: &Admin, id: &redisaq::JobId) -> Option<JobState> {
    let status = admin.job("dash_where", id).await.unwrap();
    status.groups.first().map(|g| g.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_shows_running_while_its_handler_runs_and_pending_while_it_waits_to_retry() {
    redisaq_tests::setup();
    let admin = Admin::connect(&redis().url()).await.unwrap();
    // Retries far off: a failed job waits for its retry while the test looks.
    let worker = Background::start(
        test_worker(&["dash_where"])
            .retry_backoff(Duration::from_secs(600), Duration::from_secs(600)),
    );
    let held = dash_where::enqueue(0).await.unwrap();
    assert!(WHERE_HOLD.started().await, "the held job started");
    let running = admin.job("dash_where", &held).await.unwrap();
    assert_eq!(running.groups[0].state, JobState::Running, "{running:?}");
    assert!(running.groups[0].consumer.is_some(), "{running:?}");

    let failing = dash_where::enqueue(1).await.unwrap();
    let mut seen = Vec::new();
    let retrying = eventually(Duration::from_secs(30), || {
        let state = futures_lite(async { Ok(state_in_group(&admin, &failing).await) });
        seen.push(state);
        state == Some(JobState::Pending)
    })
    .await;
    assert!(retrying, "the failed job waits for its retry: {seen:?}");
    let shown = admin.job("dash_where", &failing).await.unwrap();
    assert_eq!(shown.groups[0].deliveries, Some(1), "{shown:?}");

    WHERE_HOLD.release();
    let done = eventually(Duration::from_secs(30), || {
        futures_lite(async { Ok(state_in_group(&admin, &held).await) }) == Some(JobState::Done)
    })
    .await;
    worker.stop().await.unwrap();
    assert!(done, "the held job finished");
}
