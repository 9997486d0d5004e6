//! `redisaq`: look at and repair redisaq's data in Redis. Renders what
//! `redisaq::admin` returns: tables for people, `--json` for scripts.
//!
//! Exit codes: 0 done; 1 failed (Redis unreachable, unknown topic, refused change);
//! 2 bad usage, or a destructive command without `--yes`; 3 `monitor` found a consumer
//! that is not OK.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use comfy_table::Table;
use redisaq::admin::{Admin, ConsumerState, DeadLetterEntry};

#[derive(Parser)]
#[command(
    name = "redisaq",
    version,
    about = "Inspect and repair redisaq job queues in Redis"
)]
struct Cli {
    /// The Redis to inspect.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    redis_url: String,
    /// PEM file of the CA to trust for `rediss://`, beside the system's roots.
    #[arg(long, env = "REDISAQ_TLS_CA_FILE", global = true)]
    tls_ca_file: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Topics, partition counts, stream lengths and entry ages.
    Topics,
    /// A topic's consumer groups: lag, pending, live consumers, assignment.
    Groups {
        /// The topic.
        topic: String,
    },
    /// A group's consumers: idle time, pending entries, heartbeat, partitions, status.
    Monitor {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// A live consumer idle longer than this (ms) is reported IDLE.
        #[arg(long, default_value_t = 60_000)]
        idle_threshold: u64,
        /// A consumer holding more entries than this is reported TOO_MANY_PENDING.
        #[arg(long, default_value_t = 1_000)]
        pending_threshold: u64,
        /// Remove dead consumers that hold nothing (those holding entries are left for
        /// the owners of their partitions to take over).
        #[arg(long)]
        cleanup: bool,
        /// Refresh every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
    },
    /// Scale advice for a group: OUT, IN or NO_SCALE, with the figures used.
    Scale {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// Advise OUT above this utilisation (%).
        #[arg(long, default_value_t = 60.0, alias = "scale-out-rate")]
        scale_out_pct: f64,
        /// Advise IN below this utilisation (%) while the backlog is not growing.
        #[arg(long, default_value_t = 20.0, alias = "scale-in-rate")]
        scale_in_pct: f64,
    },
    /// Dead-lettered jobs.
    Dlq {
        #[command(subcommand)]
        action: Dlq,
    },
    /// Bring topics to the newest layout of redisaq's data in Redis (moves layout 1's
    /// dead letters beside their partitions). Safe to run again, and while workers run.
    Migrate {
        /// The topics; all when none is given.
        topics: Vec<String>,
    },
    /// Serve the web dashboard (loopback unless told otherwise).
    Dashboard {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Every change (replay, purge, pause, cancel) needs this token.
        #[arg(long, env = "REDISAQ_DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Show no change buttons and refuse every change.
        #[arg(long)]
        read_only: bool,
        /// Show job payloads (they may hold personal data).
        #[arg(long)]
        show_payloads: bool,
    },
    /// Where a job is: delayed, or per group waiting, pending or done; its dead letters
    /// (exit 1 if it is nowhere).
    Job {
        /// The topic.
        topic: String,
        /// The job id that enqueue returned.
        id: String,
    },
    /// Cron schedules (`#[job(cron = ...)]`): topic, expression, time zone, last and next
    /// fire time.
    Schedules,
    /// Cancel a delayed job before it runs (exit 1 if no such job waits).
    Cancel {
        /// The topic.
        topic: String,
        /// The job id that enqueue returned.
        #[arg(long)]
        id: String,
    },
    /// Pause a topic, or one group of it: workers start no new job within a heartbeat
    /// interval; running jobs finish. Lasts until `resume`, across restarts.
    Pause {
        /// The topic.
        topic: String,
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Resume what `pause` paused (give the same --group).
    Resume {
        /// The topic.
        topic: String,
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// Raise a topic's partition count (lowering is refused).
    Partitions {
        /// The topic.
        topic: String,
        /// The new partition count.
        #[arg(long)]
        set: u32,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// Dead letters, oldest first.
    List {
        /// The topic.
        topic: String,
        /// Only this group's.
        #[arg(long)]
        group: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One dead letter in full, payload included.
    Show {
        /// The topic.
        topic: String,
        /// Job id or dead-letter id.
        #[arg(long)]
        id: String,
    },
    /// Put dead-lettered jobs back (attempts start again at 1; only the group that gave
    /// up on a job runs it again). Replaying the same dead letter twice adds it once.
    Replay {
        /// The topic.
        topic: String,
        /// Only this group's dead letters.
        #[arg(long)]
        group: Option<String>,
        /// Only these (job id or dead-letter id); all when none is given.
        #[arg(long)]
        id: Vec<String>,
    },
    /// Delete every dead letter of a topic.
    Purge {
        /// The topic.
        topic: String,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) if ms < 7_200_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        Some(ms) => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// A Unix time in ms as UTC, to the second: `2026-12-06 03:00:00 UTC`.
fn utc(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The rate column of `groups`: the limit and what the current period used of it, and
/// the limit per key.
fn rate_text(group: &redisaq::admin::GroupStatus) -> String {
    let mut parts = Vec::new();
    if let (Some(rate), Some(used)) = (&group.rate, group.rate_used) {
        parts.push(format!("{rate} ({used} started in the last period)"));
    }
    if let Some(key_rate) = &group.key_rate {
        parts.push(format!("{key_rate} per key"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The paused column of `topics`: the whole topic, or which groups.
fn paused_text(topic: bool, groups: &[String]) -> String {
    match (topic, groups.is_empty()) {
        (true, _) => "yes".into(),
        (false, true) => "no".into(),
        (false, false) => groups.join(" "),
    }
}

fn short(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(width - 1).collect::<String>())
    }
}

fn print<T: serde::Serialize>(json: bool, value: &T, table: impl FnOnce() -> Table) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable")
        );
    } else {
        println!("{}", table());
    }
}

fn letters_table(letters: &[DeadLetterEntry]) -> Table {
    let mut table = Table::new();
    table.set_header([
        "job id",
        "group",
        "partition",
        "attempts",
        "error",
        "dead-lettered",
    ]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for l in letters {
        table.add_row([
            l.id.to_string(),
            l.group.clone(),
            l.partition.to_string(),
            l.attempts.to_string(),
            short(&l.error, 60),
            format!("{} ago", age(Some(now_ms.saturating_sub(l.failed_at_ms)))),
        ]);
    }
    table
}

async fn run(cli: Cli) -> Result<ExitCode, redisaq::Error> {
    let admin = Admin::connect(&cli.redis_url).await?;
    match cli.command {
        Command::Topics => {
            let topics = admin.topics().await?;
            print(cli.json, &topics, || {
                let mut table = Table::new();
                table.set_header([
                    "topic",
                    "partitions",
                    "lengths",
                    "oldest",
                    "newest",
                    "delayed",
                    "dead letters",
                    "paused",
                ]);
                for t in &topics {
                    let lengths: Vec<String> =
                        t.streams.iter().map(|s| s.length.to_string()).collect();
                    let oldest = t.streams.iter().filter_map(|s| s.oldest_age_ms).max();
                    let newest = t.streams.iter().filter_map(|s| s.newest_age_ms).min();
                    table.add_row([
                        t.topic.clone(),
                        t.partitions.to_string(),
                        lengths.join(" "),
                        age(oldest),
                        age(newest),
                        t.delayed.to_string(),
                        t.dead_letters.to_string(),
                        paused_text(t.paused, &t.paused_groups),
                    ]);
                }
                table
            });
        }
        Command::Groups { topic } => {
            let groups = admin.groups(&topic).await?;
            print(cli.json, &groups, || {
                let mut table = Table::new();
                table.set_header([
                    "group",
                    "lag",
                    "pending",
                    "consumers",
                    "generation",
                    "assignment",
                    "paused",
                    "rate",
                ]);
                for g in &groups {
                    let assignment: Vec<String> = g
                        .owners
                        .iter()
                        .enumerate()
                        .map(|(p, o)| format!("{p}:{o}"))
                        .collect();
                    table.add_row([
                        g.group.clone(),
                        g.lag.to_string(),
                        g.pending.to_string(),
                        g.consumers.join(" "),
                        g.generation.to_string(),
                        assignment.join(" "),
                        if g.paused { "yes" } else { "no" }.into(),
                        rate_text(g),
                    ]);
                }
                table
            });
        }
        Command::Monitor {
            topic,
            group,
            idle_threshold,
            pending_threshold,
            cleanup,
            watch,
        } => loop {
            if cleanup {
                let report = admin.cleanup(&topic, &group).await?;
                if cli.json {
                    println!("{}", serde_json::to_string(&report).expect("serializable"));
                } else {
                    for name in &report.removed {
                        println!("removed dead consumer {name}");
                    }
                    for kept in &report.kept {
                        println!(
                            "kept dead consumer {} ({} pending): its partitions' owners take its entries over",
                            kept.consumer, kept.pending
                        );
                    }
                }
            }
            let consumers = admin
                .monitor(&topic, &group, idle_threshold, pending_threshold)
                .await?;
            print(cli.json, &consumers, || {
                let mut table = Table::new();
                table.set_header([
                    "consumer",
                    "idle",
                    "pending",
                    "heartbeat",
                    "partitions",
                    "status",
                ]);
                for c in &consumers {
                    let partitions: Vec<String> = c.partitions.iter().map(u32::to_string).collect();
                    table.add_row([
                        c.consumer.clone(),
                        age(Some(c.idle_ms)),
                        c.pending.to_string(),
                        if c.alive { "alive" } else { "expired" }.into(),
                        partitions.join(" "),
                        c.status.to_string(),
                    ]);
                }
                table
            });
            match watch {
                Some(secs) => tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await,
                None if consumers.iter().all(|c| c.status == ConsumerState::Ok) => break,
                None => return Ok(ExitCode::from(3)),
            }
        },
        Command::Scale {
            topic,
            group,
            scale_out_pct,
            scale_in_pct,
        } => {
            let advice = admin
                .scale(&topic, &group, scale_out_pct, scale_in_pct)
                .await?;
            print(cli.json, &advice, || {
                let mut table = Table::new();
                table.set_header([
                    "decision",
                    "utilisation",
                    "backlog",
                    "per consumer",
                    "growth",
                    "finished",
                    "consumers",
                    "partitions",
                ]);
                table.add_row([
                    advice.decision.to_string(),
                    format!("{:.1}%", advice.utilisation_pct),
                    advice.backlog.to_string(),
                    format!("{:.1}", advice.backlog_per_consumer),
                    format!("{:+}", advice.growth),
                    format!("{} in {} ms", advice.finished, advice.window_ms),
                    advice.consumers.to_string(),
                    advice.partitions.to_string(),
                ]);
                table
            });
            if !cli.json {
                println!("{}", advice.reason);
            }
        }
        Command::Dlq { action } => match action {
            Dlq::List {
                topic,
                group,
                limit,
            } => {
                let letters = admin.dead_letters(&topic, group.as_deref(), limit).await?;
                print(cli.json, &letters, || letters_table(&letters));
            }
            Dlq::Show { topic, id } => {
                let Some(letter) = admin.dead_letter(&topic, &id).await? else {
                    eprintln!("no dead letter `{id}` on topic `{topic}`; `redisaq dlq list {topic}` lists them");
                    return Ok(ExitCode::from(1));
                };
                print(cli.json, &letter, || {
                    let mut table = Table::new();
                    let rows = [
                        ("job id", letter.id.to_string()),
                        ("dead-letter id", letter.dead_letter_id.clone()),
                        ("topic", letter.topic.clone()),
                        ("group", letter.group.clone()),
                        ("partition", letter.partition.to_string()),
                        ("attempts", letter.attempts.to_string()),
                        ("error", letter.error.clone()),
                        ("payload", letter.payload.clone()),
                        ("original entry", letter.entry_id.clone()),
                        ("dead-lettered at (ms)", letter.failed_at_ms.to_string()),
                    ];
                    for (name, value) in rows {
                        table.add_row([name.to_string(), value]);
                    }
                    table
                });
            }
            Dlq::Replay { topic, group, id } => {
                let replayed = admin.replay(&topic, group.as_deref(), &id).await?;
                if cli.json {
                    print(true, &replayed, Table::new);
                } else {
                    println!("replayed {} job(s) into topic `{topic}`", replayed.len());
                }
            }
            Dlq::Purge { topic, yes } => {
                if !yes {
                    eprintln!("this deletes every dead letter of `{topic}`; add --yes to do it");
                    return Ok(ExitCode::from(2));
                }
                let purged = admin.purge_dead_letters(&topic).await?;
                if cli.json {
                    println!("{}", serde_json::json!({ "purged": purged }));
                } else {
                    println!("purged {purged} dead letter(s) of topic `{topic}`");
                }
            }
        },
        Command::Migrate { topics } => {
            let done = admin.migrate(&topics).await?;
            print(cli.json, &done, || {
                let mut table = Table::new();
                table.set_header(["TOPIC", "LAYOUT", "DEAD LETTERS MOVED"]);
                for topic in &done {
                    table.add_row([
                        topic.topic.clone(),
                        topic.layout.to_string(),
                        topic.dead_letters_moved.to_string(),
                    ]);
                }
                table
            });
        }
        Command::Dashboard {
            listen,
            token,
            read_only,
            show_payloads,
        } => {
            if !listen.ip().is_loopback() && token.is_none() && !read_only {
                eprintln!(
                    "redisaq: the dashboard on {listen} is reachable from other machines and \
                     anyone there could replay, purge or pause: give --token (or \
                     REDISAQ_DASHBOARD_TOKEN), --read-only, or listen on 127.0.0.1"
                );
                return Ok(ExitCode::from(2));
            }
            let options = redisaq::dashboard::Options::new()
                .read_only(read_only)
                .show_payloads(show_payloads);
            let options = match token {
                Some(token) => options.token(token),
                None => options,
            };
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => listener,
                Err(e) => {
                    eprintln!("redisaq: cannot listen on {listen}: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            println!(
                "redisaq dashboard on http://{}/",
                listener.local_addr().unwrap_or(listen)
            );
            let app = redisaq::dashboard::router(admin, options);
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                eprintln!("redisaq: the dashboard stopped: {e}");
                return Ok(ExitCode::from(1));
            }
        }
        Command::Job { topic, id } => {
            let status = admin
                .job(&topic, &redisaq::JobId::from(id.as_str()))
                .await?;
            print(cli.json, &status, || {
                let mut table = Table::new();
                table.set_header(["where", "state", "consumer", "deliveries"]);
                if let Some(due) = status.due_ms {
                    table.add_row([
                        "delayed".into(),
                        format!("due {}", utc(due)),
                        "-".into(),
                        "-".into(),
                    ]);
                }
                for g in &status.groups {
                    table.add_row([
                        format!(
                            "group {} (partition {}, entry {})",
                            g.group,
                            status.partition.unwrap_or_default(),
                            status.entry_id.as_deref().unwrap_or("-")
                        ),
                        g.state.to_string(),
                        g.consumer.clone().unwrap_or_else(|| "-".into()),
                        g.deliveries.map_or("-".into(), |d| d.to_string()),
                    ]);
                }
                for l in &status.dead_letters {
                    table.add_row([
                        format!("dead letter of {}", l.group),
                        short(&l.error, 60),
                        "-".into(),
                        l.attempts.to_string(),
                    ]);
                }
                table
            });
            if !status.found() {
                eprintln!("job `{id}` is not in topic `{topic}`: not delayed, not in a stream (trimmed, or never enqueued), not dead-lettered");
                return Ok(ExitCode::from(1));
            }
        }
        Command::Schedules => {
            let schedules = admin.schedules().await?;
            print(cli.json, &schedules, || {
                let mut table = Table::new();
                table.set_header(["topic", "cron", "tz", "last fire", "next fire"]);
                for s in &schedules {
                    table.add_row([
                        s.topic.clone(),
                        s.cron.clone(),
                        s.tz.clone(),
                        s.last_fire_ms.map_or("-".into(), utc),
                        s.next_fire_ms.map_or("-".into(), utc),
                    ]);
                }
                table
            });
        }
        Command::Cancel { topic, id } => {
            let cancelled = admin
                .cancel(&topic, &redisaq::JobId::from(id.as_str()))
                .await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "id": id, "cancelled": cancelled })
                );
            } else if cancelled {
                println!("cancelled delayed job {id} of topic `{topic}`");
            } else {
                eprintln!("no delayed job `{id}` waits on topic `{topic}` (it never was delayed, was cancelled, or is due and runs)");
            }
            if !cancelled {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Pause { topic, group } => {
            admin.pause(&topic, group.as_deref()).await?;
            let what = group.map_or(format!("topic `{topic}`"), |g| {
                format!("group `{g}` of topic `{topic}`")
            });
            println!("paused {what}: workers start no new job of it within a heartbeat interval; `redisaq resume` undoes it");
        }
        Command::Resume { topic, group } => {
            admin.resume(&topic, group.as_deref()).await?;
            let what = group.map_or(format!("topic `{topic}`"), |g| {
                format!("group `{g}` of topic `{topic}`")
            });
            println!("resumed {what}");
        }
        Command::Partitions { topic, set } => {
            let previous = admin.set_partitions(&topic, set).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "topic": topic, "previous": previous, "partitions": set })
                );
            } else {
                println!("topic `{topic}`: {previous} -> {set} partitions; workers rebalance within a few seconds");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ca) = &cli.tls_ca_file {
        // Before any thread exists: the library reads the CA file's name from here.
        std::env::set_var("REDISAQ_TLS_CA_FILE", ca);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("redisaq: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(redisaq::Error::Redis(e))
            if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() =>
        {
            eprintln!("redisaq: cannot reach Redis ({e}); start it, or point --redis-url / REDIS_URL at it");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("redisaq: {e}");
            ExitCode::from(1)
        }
    }
}
