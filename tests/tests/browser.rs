//! The dashboard in a real browser (headless Chromium driven over WebDriver): open the
//! overview, follow to a topic and to its dead letters, replay one, see it gone and its
//! job run. Needs `chromium` and `chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them). With `REDISAQ_SCREENSHOTS=<dir>` it also
//! saves the screenshots the README shows.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use redisaq::admin::Admin;
use redisaq::{job, EnqueueOptions, Job, JobError};
use redisaq_tests::{
    eventually, free_port, redis, test_worker, Background, Calls, KillOnDrop, Work,
};

static FAIL: AtomicBool = AtomicBool::new(true);
static RAN: Calls<u64> = Calls::new();

#[job(topic = "shop_orders", group = "payments", partitions = 2, retries = 0)]
async fn charge(job: Job<Work>) -> Result<(), JobError> {
    let n = job.payload().n;
    if FAIL.load(Ordering::SeqCst) && n % 3 == 1 {
        return Err(JobError::fatal(format!("card of order {n} declined")));
    }
    RAN.push(n);
    Ok(())
}

/// ChromeDriver on a free port, until dropped.
fn chromedriver() -> (KillOnDrop, u16) {
    let port = free_port();
    let driver = KillOnDrop::spawn(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    (driver, port)
}

async fn browser(driver_port: u16) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            // As root, Chromium runs only without its sandbox.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    let url = format!("http://127.0.0.1:{driver_port}");
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("no WebDriver session: is chromedriver (Debian's chromium-driver) installed?");
}

/// Saves a screenshot of the current page when `REDISAQ_SCREENSHOTS` names a directory.
async fn screenshot(client: &Client, name: &str) {
    if let Ok(dir) = std::env::var("REDISAQ_SCREENSHOTS") {
        let png = client.screenshot().await.expect("a screenshot");
        std::fs::write(std::path::Path::new(&dir).join(name), png).expect("save the screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_a_topic_follow_to_its_dead_letters_and_replay_one() {
    let worker = Background::start(test_worker(&["shop_orders"]));
    let admin = Admin::connect(&redis().url()).await.unwrap();
    charge::enqueue_batch((0..9).map(|n| Work { n }))
        .await
        .unwrap();
    charge::enqueue_with(
        Work { n: 100 },
        EnqueueOptions::new().delay(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let failed = eventually(Duration::from_secs(30), || RAN.len() == 6).await;
    assert!(failed, "the good orders ran");
    let mut letters = Vec::new();
    for _ in 0..300 {
        letters = admin.dead_letters("shop_orders", None, 100).await.unwrap();
        if letters.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters.len(), 3, "three orders were dead-lettered");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    let app = redisaq::dashboard::router(admin.clone(), redisaq::dashboard::Options::new());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (_driver, driver_port) = chromedriver();
    let client = browser(driver_port).await;
    client.goto(&format!("{site}/")).await.unwrap();
    screenshot(&client, "dashboard-overview.png").await;
    client
        .find(Locator::LinkText("shop_orders"))
        .await
        .expect("the overview links the topic")
        .click()
        .await
        .unwrap();
    let heading = client
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(heading.contains("Topic shop_orders"), "{heading}");
    screenshot(&client, "dashboard-topic.png").await;
    client
        .find(Locator::LinkText("3 dead letters"))
        .await
        .expect("the topic links its dead letters")
        .click()
        .await
        .unwrap();
    screenshot(&client, "dashboard-dead-letters.png").await;
    let first = client
        .find(Locator::Css("td a code"))
        .await
        .expect("a dead letter in the list");
    let id = first.text().await.unwrap();
    first.click().await.unwrap();
    let heading = client
        .wait()
        .for_element(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(heading.starts_with("Dead letter "), "{heading}");
    let page = client.source().await.unwrap();
    assert!(page.contains("declined"), "the dead letter shows its error");
    FAIL.store(false, Ordering::SeqCst);
    client
        .find(Locator::Css("main form button[type=submit]"))
        .await
        .expect("a replay button")
        .click()
        .await
        .unwrap();
    // The form's post redirects back to the list; wait for the browser to get there.
    let mut url = client.current_url().await.unwrap();
    for _ in 0..100 {
        if url.path().ends_with("/topics/shop_orders/dead-letters") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        url = client.current_url().await.unwrap();
    }
    assert!(
        url.path().ends_with("/topics/shop_orders/dead-letters"),
        "{url}"
    );
    let page = client.source().await.unwrap();
    assert!(
        !page.contains(&id),
        "the replayed dead letter is gone from the list"
    );
    assert_eq!(
        page.matches("name=\"ids\"").count(),
        2,
        "two are left: {page}"
    );
    let replayed = letters.iter().find(|l| l.id == *id.as_str()).unwrap();
    let n = serde_json::from_str::<Work>(&replayed.payload).unwrap().n;
    assert!(
        eventually(Duration::from_secs(30), || RAN.all().contains(&n)).await,
        "the replayed order ran"
    );
    if std::env::var("REDISAQ_SCREENSHOTS").is_ok() {
        client.set_window_size(390, 844).await.unwrap();
        client
            .goto(&format!("{site}/topics/shop_orders"))
            .await
            .unwrap();
        screenshot(&client, "dashboard-topic-phone.png").await;
    }
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}
