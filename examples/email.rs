//! The e-mail example: a producer enqueues batches of 2–5 e-mails every 0.5–2 s to
//! `send_email`, which starts with 1 partition, and raises its partition count by one
//! every two batches up to 8; with every third batch it also enqueues a reminder delayed
//! by 3 s to `remind`. Two consumers in `email_group` send the e-mails, a third joins
//! a third of the way in (only the partitions that move pause and resume), and a
//! consumer in `email_group_v2`, started half-way, reconsumes every e-mail from the
//! beginning. The workers also keep the nightly digest's cron schedule.
//!
//! Each demo run uses a key prefix of its own (`REDISAQ_PREFIX=email-demo-<time>`, printed
//! at the start), so it starts from 1 partition again on the same Redis.
//!
//! `cargo run -p redisaq-examples --bin email` runs all of it for 15 seconds against
//! `REDIS_URL` (or a private `redis-server` when nothing answers there). The parts run
//! alone too: `email producer`, `email worker --name consumer_1 [--group email_group_v2]`
//! (`--group` may be given several times).

use std::process::Stdio;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rand::Rng;
use redisaq::{job, EnqueueOptions, Job, JobError};
use serde::{Deserialize, Serialize};

/// An e-mail to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Email {
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
}

/// Sends an e-mail (here: logs it after a short pause, as a real SMTP call would take).
#[job(
    topic = "send_email",
    group = "email_group",
    partitions = 1,
    retries = 3
)]
pub async fn send_email(job: Job<Email>) -> Result<(), JobError> {
    let email = job.payload();
    let smtp_time = Duration::from_millis(rand::rng().random_range(50..300));
    tokio::time::sleep(smtp_time).await;
    tracing::info!(
        "Sent email to {} about {:?} (job {})",
        email.to,
        email.subject,
        job.id()
    );
    Ok(())
}

/// A reminder, enqueued with a delay: it runs when due, once however often it was
/// enqueued (its id is given).
#[job(topic = "remind", group = "reminder_group", partitions = 2)]
pub async fn send_reminder(job: Job<Email>) -> Result<(), JobError> {
    let waited = job.enqueued_at().elapsed().unwrap_or_default();
    tracing::info!(
        "Sent reminder to {} about {:?} (job {}, {:.1} s after it was enqueued)",
        job.payload().to,
        job.payload().subject,
        job.id(),
        waited.as_secs_f64()
    );
    Ok(())
}

/// The nightly digest: one job per night at 03:00 Berlin time, however many workers
/// run.
#[job(
    topic = "nightly_digest",
    group = "digest_group",
    cron = "0 0 3 * * *",
    tz = "Europe/Berlin"
)]
pub async fn nightly_digest(job: Job<redisaq::Tick>) -> Result<(), JobError> {
    tracing::info!(
        "Sending the nightly digest of {:?} (job {})",
        job.payload().scheduled_at(),
        job.id()
    );
    Ok(())
}

/// A second group on the same topic: gets every e-mail too, from the oldest retained one.
#[job(topic = "send_email", group = "email_group_v2", partitions = 1)]
pub async fn send_email_v2(job: Job<Email>) -> Result<(), JobError> {
    tracing::info!(
        "[v2] Re-processed email to {} (job {})",
        job.payload().to,
        job.id()
    );
    Ok(())
}

#[derive(Parser)]
#[command(about = "The redisaq e-mail example")]
struct Args {
    /// Redis to use; when nothing answers there, a private redis-server is started.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    redis_url: String,
    #[command(subcommand)]
    part: Option<Part>,
}

#[derive(Subcommand)]
enum Part {
    /// Producer, two `email_group` consumers and a late `email_group_v2` consumer.
    Demo {
        /// How long to run before stopping everything.
        #[arg(long, default_value_t = 24)]
        seconds: u64,
    },
    /// Enqueues batches of 2–5 e-mails every 0.5–2 s until stopped (or `--batches` done).
    Producer {
        /// Stop after this many batches.
        #[arg(long)]
        batches: Option<u32>,
        /// Raise `send_email` by one partition every two batches, up to this many.
        #[arg(long, default_value_t = 8)]
        grow_to: u32,
    },
    /// Runs consumers until SIGINT / SIGTERM.
    Worker {
        /// Consumer name prefix.
        #[arg(long, default_value = "consumer_1")]
        name: String,
        /// Only these groups' handlers (all when none is given).
        #[arg(long)]
        group: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,redisaq=info".into()),
        )
        .with_target(false)
        .init();
    let args = Args::parse();
    match args.part.unwrap_or(Part::Demo { seconds: 24 }) {
        Part::Demo { seconds } => demo(&args.redis_url, seconds).await,
        Part::Producer { batches, grow_to } => {
            redisaq::set_redis_url(&args.redis_url)?;
            produce(batches, grow_to).await
        }
        Part::Worker { name, group } => {
            let mut worker = redisaq::Worker::new()
                .redis_url(args.redis_url)
                .consumer_name(name);
            if !group.is_empty() {
                worker = worker.groups(group);
            }
            Ok(worker.run().await?)
        }
    }
}

async fn produce(batches: Option<u32>, grow_to: u32) -> Result<(), Box<dyn std::error::Error>> {
    let mut sent = 0;
    let mut partitions = 1;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    while batches.is_none_or(|limit| sent < limit) {
        let size = rand::rng().random_range(2..=5);
        let emails = (0..size).map(|i| Email {
            to: format!("user{}@example.com", rand::rng().random_range(1..100)),
            subject: format!("Newsletter #{sent}.{i}"),
        });
        let ids = send_email::enqueue_batch(emails).await?;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        tracing::info!("Enqueued batch of {} jobs: {:?}", ids.len(), ids);
        if sent % 3 == 0 {
            let reminder = Email {
                to: "user1@example.com".into(),
                subject: format!("Did you read newsletter #{sent}?"),
            };
            // Enqueued twice (as a retried request would): the id keeps it to one job.
            let options = EnqueueOptions::new()
                .delay(Duration::from_secs(3))
                .id(format!("reminder-{sent}-{}", std::process::id()));
            send_reminder::enqueue_with(reminder.clone(), options.clone()).await?;
            let id = send_reminder::enqueue_with(reminder, options).await?;
            tracing::info!("Enqueued reminder {id}, due in 3 s");
        }
        sent += 1;
        if sent % 2 == 0 && partitions < grow_to {
            // Counts only grow; a count someone else raised further is left alone.
            partitions = (partitions + 1)
                .max(redisaq::set_partitions(send_email::TOPIC, partitions + 1).await?);
            tracing::info!(
                "Raised topic {} to {partitions} partitions",
                send_email::TOPIC
            );
        }
        let pause = Duration::from_millis(rand::rng().random_range(500..=2000));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut stop => break,
        }
    }
    Ok(())
}

/// Runs every part as its own process (as they would be deployed), then stops them with
/// SIGTERM: workers finish their running jobs and leave their groups.
async fn demo(redis_url: &str, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _private) = redisaq_tests::redis_or_private(redis_url)?;
    if _private.is_some() {
        tracing::info!("nothing answers at {redis_url}; started a private redis-server at {url}");
    }
    let prefix = format!(
        "email-demo-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    tracing::info!(
        "this run's keys start with {prefix}: inspect them with REDISAQ_PREFIX={prefix} redisaq topics"
    );
    let me = std::env::current_exe()?;
    let spawn = |args: &[&str]| {
        tokio::process::Command::new(&me)
            .args(args)
            .env("REDIS_URL", &url)
            .env("REDISAQ_PREFIX", &prefix)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    let mut children = vec![
        spawn(&[
            "worker",
            "--name",
            "consumer_1",
            "--group",
            "email_group",
            "--group",
            "reminder_group",
            "--group",
            "digest_group",
        ])?,
        spawn(&[
            "worker",
            "--name",
            "consumer_2",
            "--group",
            "email_group",
            "--group",
            "reminder_group",
        ])?,
        spawn(&["producer"])?,
    ];
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    tracing::info!("starting consumer_3 in email_group: it takes over some partitions");
    children.push(spawn(&[
        "worker",
        "--name",
        "consumer_3",
        "--group",
        "email_group",
    ])?);
    tokio::time::sleep(Duration::from_secs(seconds / 2 - seconds / 3)).await;
    tracing::info!("starting consumer_v2 in email_group_v2: it reconsumes from the first e-mail");
    children.push(spawn(&[
        "worker",
        "--name",
        "consumer_v2",
        "--group",
        "email_group_v2",
    ])?);
    tokio::time::sleep(Duration::from_secs(seconds - seconds / 2)).await;
    tracing::info!("demo over: stopping the producer and the workers");
    for child in &children {
        if let Some(pid) = child.id() {
            // SIGTERM, the signal a process manager sends.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    for child in &mut children {
        child.wait().await?;
    }
    Ok(())
}
