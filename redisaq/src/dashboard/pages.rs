//! The dashboard's pages as HTML (maud): what [`crate::admin`] returns, in tables that
//! read well on a laptop and scroll sideways on a phone.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::rates::Rate;

use crate::admin::{
    ConsumerState, ConsumerStatus, DeadLetterEntry, DelayedJob, GroupStatus, JobState, JobStatus,
    ScheduleStatus, TopicStatus,
};

/// What the pages may show.
pub(super) struct View {
    pub can_change: bool,
    pub show_payloads: bool,
}

const STYLE: &str = r#"
:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ec; --bg: #f7f8fa; --ok: #1f8a4c;
  --warn: #b7791f; --bad: #c53030; --accent: #2b59c3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: baseline;
  padding: .8rem 1.2rem; background: #1d2330; color: #fff; }
header a { color: #fff; text-decoration: none; } header strong { font-size: 1.1rem; }
main { padding: 1rem 1.2rem 3rem; max-width: 1200px; }
h1 { font-size: 1.4rem; margin: .2rem 0 1rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
a { color: var(--accent); }
.scroll { overflow-x: auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .7rem; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: .85rem; }
tr:last-child td { border-bottom: 0; }
td.num { font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: .05rem .5rem; border-radius: 999px; font-size: .8rem;
  font-weight: 600; color: #fff; background: var(--muted); }
.ok { background: var(--ok); } .warn { background: var(--warn); } .bad { background: var(--bad); }
.muted { color: var(--muted); }
form.inline { display: inline; }
button { font: inherit; padding: .25rem .7rem; border-radius: 5px; border: 1px solid var(--line);
  background: #fff; cursor: pointer; }
button.danger { border-color: var(--bad); color: var(--bad); }
.toolbar { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .6rem 0; }
input[type=text], input[type=password], select { font: inherit; padding: .25rem .5rem;
  border: 1px solid var(--line); border-radius: 5px; max-width: 100%; }
pre { white-space: pre-wrap; word-break: break-all; background: #fff; padding: .7rem;
  border: 1px solid var(--line); border-radius: 6px; }
.error { color: var(--bad); }
"#;

/// Every page: header, navigation, and a `main` that refreshes itself every 5 s (htmx
/// fetches the page again and swaps `main`), unless it holds a form being filled.
fn layout(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · redisaq" }
                style { (PreEscaped(STYLE)) }
                script src=(at("/assets/htmx.min.js")) defer {}
            }
            body {
                header {
                    strong { a href=(at("/")) { "redisaq" } }
                    a href=(at("/")) { "Topics" }
                    a href=(at("/schedules")) { "Schedules" }
                }
                @if refresh {
                    main hx-get="" hx-trigger="every 5s" hx-select="main" hx-swap="outerHTML" {
                        (body)
                    }
                } @else {
                    main { (body) }
                }
            }
        }
    }
}

tokio::task_local! {
    /// Where the dashboard is mounted (`/ops` when nested there; empty at the root),
    /// for the request being answered.
    pub(super) static BASE: String;
}

/// A path of the dashboard as the browser must ask for it: under the mount point (whose
/// own root is `/ops`, not `/ops/`, which axum's `nest` does not route).
pub(super) fn at(path: &str) -> String {
    BASE.try_with(|base| match path {
        "/" if !base.is_empty() => base.clone(),
        _ => format!("{base}{path}"),
    })
    .unwrap_or_else(|_| path.to_string())
}

/// What a path segment keeps as it is: letters, digits and `-._~` (RFC 3986 unreserved).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Text as one path segment of a link: ids and names may hold `/`, `?` or `#`.
pub(super) fn seg(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A duration in ms, short.
fn span(ms: u64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms} ms"),
        ms if ms < 120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms if ms < 7_200_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        ms => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

fn when(ms: u64) -> String {
    let now = now_ms();
    if ms >= now {
        format!("in {}", span(ms - now))
    } else {
        format!("{} ago", span(now - ms))
    }
}

fn status_badge(state: ConsumerState) -> Markup {
    let class = match state {
        ConsumerState::Ok => "ok",
        ConsumerState::Idle | ConsumerState::TooManyPending => "warn",
        _ => "bad",
    };
    html! { span class={ "badge " (class) } { (state.to_string()) } }
}

fn paused_badge(paused: bool) -> Markup {
    html! {
        @if paused { span class="badge warn" { "paused" } } @else { span class="badge ok" { "running" } }
    }
}

/// The hidden fields every change form carries.
fn form_fields(csrf: &str, back: &str) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(csrf);
        input type="hidden" name="back" value=(back);
    }
}

pub(super) fn failure(status: StatusCode, message: &str) -> Markup {
    let login = status == StatusCode::UNAUTHORIZED;
    layout(
        "Error",
        false,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p class="error" { (message) }
            @if login { p { a href=(at("/login")) { "Log in" } } }
            p { a href=(at("/")) { "Back to the topics" } }
        },
    )
}

pub(super) fn overview(topics: &[(TopicStatus, Vec<GroupStatus>, Option<Rate>)]) -> Markup {
    layout(
        "Topics",
        true,
        html! {
            h1 { "Topics" }
            @if topics.is_empty() {
                p class="muted" { "No topics yet: they appear once a job is enqueued or a worker starts." }
            } @else {
                div class="scroll" { table {
                    thead { tr {
                        th { "topic" } th { "partitions" } th { "enqueued" } th { "stored" } th { "waiting" }
                        th { "pending" } th { "delayed" } th { "dead letters" } th { "groups" } th { "state" }
                    } }
                    tbody {
                        @for (topic, groups, rate) in topics {
                            @let stored: u64 = topic.streams.iter().map(|s| s.length).sum();
                            @let waiting: u64 = groups.iter().map(|g| g.lag).sum();
                            @let pending: u64 = groups.iter().map(|g| g.pending).sum();
                            tr {
                                td { a href={ (at("/topics/")) (seg(&topic.topic)) } { (topic.topic) } }
                                td class="num" { (topic.partitions) }
                                td class="num" {
                                    @if let Some(rate) = rate {
                                        (format!("{:.0}", rate.per_minute)) "/min "
                                        span class="muted" { "(last " (span(rate.over.as_millis() as u64)) ")" }
                                    } @else { span class="muted" { "…" } }
                                }
                                td class="num" { (stored) }
                                td class="num" { (waiting) }
                                td class="num" { (pending) }
                                td class="num" { (topic.delayed) }
                                td class="num" {
                                    @if topic.dead_letters > 0 {
                                        a href={ (at("/topics/")) (seg(&topic.topic)) "/dead-letters" } {
                                            span class="badge bad" { (topic.dead_letters) }
                                        }
                                    } @else { "0" }
                                }
                                td class="num" { (groups.len()) }
                                td {
                                    @if topic.paused { (paused_badge(true)) }
                                    @else if !topic.paused_groups.is_empty() {
                                        span class="badge warn" { "paused: " (topic.paused_groups.join(", ")) }
                                    } @else { (paused_badge(false)) }
                                }
                            }
                        }
                    }
                } }
                p class="muted" { "Enqueued: jobs per minute while this page was open (up to the last 5 min, from Redis' count of entries added). Waiting: entries not yet delivered to a group, summed over the groups; pending: delivered, not yet acknowledged." }
            }
        },
    )
}

pub(super) fn schedules(schedules: &[ScheduleStatus]) -> Markup {
    layout(
        "Schedules",
        true,
        html! {
            h1 { "Schedules" }
            @if schedules.is_empty() {
                p class="muted" { "No cron schedules: a worker records one when it runs a #[job(cron = \"...\")] handler." }
            } @else {
                div class="scroll" { table {
                    thead { tr { th { "topic" } th { "cron" } th { "time zone" } th { "last fire" } th { "next fire" } } }
                    tbody {
                        @for s in schedules {
                            tr {
                                td { a href={ (at("/topics/")) (seg(&s.topic)) } { (s.topic) } }
                                td { code { (s.cron) } }
                                td { (s.tz) }
                                td { (s.last_fire_ms.map_or("-".into(), when)) }
                                td { (s.next_fire_ms.map_or("-".into(), when)) }
                            }
                        }
                    }
                } }
            }
        },
    )
}

fn pause_form(csrf: &str, topic: &str, group: Option<&str>, paused: bool) -> Markup {
    let action = if paused { "resume" } else { "pause" };
    html! {
        form class="inline" method="post" action={ (at("/topics/")) (seg(topic)) "/" (action) } {
            (form_fields(csrf, &at(&format!("/topics/{}", seg(topic)))))
            @if let Some(group) = group { input type="hidden" name="group" value=(group); }
            button type="submit" { @if paused { "Resume" } @else { "Pause" } }
        }
    }
}

pub(super) fn topic(
    view: &View,
    csrf: &str,
    topic: &TopicStatus,
    groups: &[GroupStatus],
    consumers: &[(String, Vec<ConsumerStatus>)],
    delayed: &[DelayedJob],
) -> Markup {
    let name = topic.topic.as_str();
    layout(
        name,
        true,
        html! {
            h1 { "Topic " (name) " " (paused_badge(topic.paused)) }
            (job_search(name, None))
            div class="toolbar" {
                a href={ (at("/topics/")) (seg(name)) "/dead-letters" } { (topic.dead_letters) " dead letters" }
                span class="muted" { (topic.delayed) " delayed" }
                @if view.can_change { (pause_form(csrf, name, None, topic.paused)) }
            }
            h2 { "Partitions" }
            div class="scroll" { table {
                thead { tr { th { "partition" } th { "stored" } th { "oldest" } th { "newest" }
                    @for g in groups { th { "owner in " (g.group) } } } }
                tbody {
                    @for s in &topic.streams {
                        tr {
                            td class="num" { (s.partition) }
                            td class="num" { (s.length) }
                            td { (s.oldest_age_ms.map_or("-".into(), |ms| format!("{} ago", span(ms)))) }
                            td { (s.newest_age_ms.map_or("-".into(), |ms| format!("{} ago", span(ms)))) }
                            @for g in groups {
                                td { (g.owners.get(s.partition as usize).map_or("-", String::as_str)) }
                            }
                        }
                    }
                }
            } }
            h2 { "Groups" }
            @if groups.is_empty() {
                p class="muted" { "No group has read this topic yet." }
            } @else {
                div class="scroll" { table {
                    thead { tr { th { "group" } th { "waiting" } th { "pending" } th { "consumers" }
                        th { "generation" } th { "rate" } th { "state" } @if view.can_change { th {} } } }
                    tbody {
                        @for g in groups {
                            tr {
                                td { (g.group) }
                                td class="num" { (g.lag) }
                                td class="num" { (g.pending) }
                                td class="num" { (g.consumers.len()) }
                                td class="num" { (g.generation) }
                                td {
                                    @if let (Some(rate), Some(used)) = (&g.rate, g.rate_used) { (rate) " (" (used) " in the last period)" }
                                    @if let Some(key_rate) = &g.key_rate { " " (key_rate) " per key" }
                                    @if g.rate.is_none() && g.key_rate.is_none() { span class="muted" { "-" } }
                                }
                                td { (paused_badge(g.paused)) }
                                @if view.can_change {
                                    td { @if !topic.paused { (pause_form(csrf, name, Some(&g.group), g.paused)) } }
                                }
                            }
                        }
                    }
                } }
            }
            @for (group, members) in consumers {
                h2 { "Consumers of " (group) }
                @if members.is_empty() {
                    p class="muted" { "None." }
                } @else {
                    div class="scroll" { table {
                        thead { tr { th { "consumer" } th { "idle" } th { "pending" } th { "heartbeat" } th { "partitions" } th { "status" } } }
                        tbody {
                            @for c in members {
                                tr {
                                    td { (c.consumer) }
                                    td { (span(c.idle_ms)) }
                                    td class="num" { (c.pending) }
                                    td { @if c.alive { "alive" } @else { "expired" } }
                                    td { (c.partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")) }
                                    td { (status_badge(c.status)) }
                                }
                            }
                        }
                    } }
                }
            }
            h2 { "Delayed jobs" }
            @if delayed.is_empty() {
                p class="muted" { "None waiting." }
            } @else {
                div class="scroll" { table {
                    thead { tr { th { "job id" } th { "partition" } th { "due" } @if view.can_change { th {} } } }
                    tbody {
                        @for job in delayed {
                            tr {
                                td { code { (job.id) } }
                                td class="num" { (job.partition) }
                                td { (when(job.due_ms)) }
                                @if view.can_change {
                                    td {
                                        form class="inline" method="post" action={ (at("/topics/")) (seg(name)) "/delayed/" (seg(job.id.as_str())) "/cancel" } {
                                            (form_fields(csrf, &at(&format!("/topics/{}", seg(name)))))
                                            button type="submit" class="danger" { "Cancel" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
                @if (topic.delayed as usize) > delayed.len() {
                    p class="muted" { "The " (delayed.len()) " due first of " (topic.delayed) "." }
                }
            }
        },
    )
}

fn job_search(topic: &str, id: Option<&str>) -> Markup {
    html! {
        form class="toolbar" method="get" action={ (at("/topics/")) (seg(topic)) "/job" } {
            input type="text" name="id" placeholder="find a job by id" value=(id.unwrap_or("")) size="40";
            button type="submit" { "Find" }
        }
    }
}

pub(super) fn job(topic: &str, id: Option<&str>, status: Option<&JobStatus>) -> Markup {
    layout(
        "Find a job",
        false,
        html! {
            h1 { "Find a job in " a href={ (at("/topics/")) (seg(topic)) } { (topic) } }
            (job_search(topic, id))
            @if let Some(status) = status {
                @if !status.found() {
                    p class="muted" { "Job " code { (status.id) } " is not in " (topic) ": not delayed, not in a stream (trimmed, or never enqueued), not dead-lettered." }
                } @else {
                    div class="scroll" { table { tbody {
                        tr { th { "job id" } td { code { (status.id) } } }
                        @if let Some(due) = status.due_ms { tr { th { "delayed" } td { "due " (when(due)) } } }
                        @if let Some(partition) = status.partition { tr { th { "partition" } td { (partition) } } }
                        @if let Some(entry) = &status.entry_id { tr { th { "stream entry" } td { code { (entry) } } } }
                        @if let Some(at) = status.enqueued_at_ms { tr { th { "enqueued" } td { (when(at)) } } }
                    } } }
                    @if !status.groups.is_empty() {
                        h2 { "In each group" }
                        div class="scroll" { table {
                            thead { tr { th { "group" } th { "state" } th { "consumer" } th { "deliveries" } } }
                            tbody {
                                @for g in &status.groups {
                                    @let class = match g.state { JobState::Done => "ok", JobState::Pending | JobState::Running => "warn", _ => "" };
                                    tr {
                                        td { (g.group) }
                                        td { span class={ "badge " (class) } { (g.state.to_string()) } }
                                        td { (g.consumer.as_deref().unwrap_or("-")) }
                                        td class="num" { (g.deliveries.map_or("-".into(), |d| d.to_string())) }
                                    }
                                }
                            }
                        } }
                    }
                    @if !status.dead_letters.is_empty() {
                        h2 { "Dead letters" }
                        div class="scroll" { table {
                            thead { tr { th { "group" } th { "attempts" } th { "error" } } }
                            tbody {
                                @for l in &status.dead_letters {
                                    tr {
                                        td { a href={ (at("/topics/")) (seg(topic)) "/dead-letters/" (seg(l.id.as_str())) } { (l.group) } }
                                        td class="num" { (l.attempts) }
                                        td { (short(&l.error, 80)) }
                                    }
                                }
                            }
                        } }
                    }
                }
            }
        },
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn dead_letters(
    view: &View,
    csrf: &str,
    topic: &str,
    groups: &[String],
    group: Option<&str>,
    search: Option<&str>,
    letters: &[DeadLetterEntry],
) -> Markup {
    let here = at(&format!("/topics/{}/dead-letters", seg(topic)));
    layout(
        &format!("Dead letters of {topic}"),
        false,
        html! {
            h1 { "Dead letters of " a href={ (at("/topics/")) (seg(topic)) } { (topic) } }
            form class="toolbar" method="get" action=(here) {
                select name="group" {
                    option value="" { "every group" }
                    @for g in groups { option value=(g) selected[group == Some(g.as_str())] { (g) } }
                }
                input type="text" name="q" placeholder="job id" value=(search.unwrap_or(""));
                button type="submit" { "Filter" }
            }
            @if letters.is_empty() {
                p class="muted" { "No dead letters" @if group.is_some() || search.is_some() { " match" } "." }
            } @else {
                form method="post" action={ (here) "/replay" } id="replay" {
                    (form_fields(csrf, &here))
                    @if let Some(group) = group { input type="hidden" name="group" value=(group); }
                    @if view.can_change {
                        div class="toolbar" {
                            button type="submit" { "Replay selected" }
                            button type="submit" name="all" value="1" {
                                "Replay all" @if let Some(group) = group { " of " (group) }
                            }
                            a href={ (here) "/purge" } { button type="button" class="danger" { "Purge…" } }
                        }
                    }
                    div class="scroll" { table {
                        thead { tr { @if view.can_change { th {} } th { "job id" } th { "group" } th { "partition" } th { "attempts" } th { "error" } th { "dead-lettered" } } }
                        tbody {
                            @for l in letters {
                                tr {
                                    @if view.can_change { td { input type="checkbox" name="ids" value=(l.id); } }
                                    td { a href={ (here) "/" (seg(l.id.as_str())) } { code { (l.id) } } }
                                    td { (l.group) }
                                    td class="num" { (l.partition) }
                                    td class="num" { (l.attempts) }
                                    td { (short(&l.error, 80)) }
                                    td { (when(l.failed_at_ms)) }
                                }
                            }
                        }
                    } }
                }
            }
        },
    )
}

fn short(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(width - 1).collect::<String>())
    }
}

pub(super) fn dead_letter(view: &View, csrf: &str, topic: &str, l: &DeadLetterEntry) -> Markup {
    let list = at(&format!("/topics/{}/dead-letters", seg(topic)));
    layout(
        &format!("Dead letter {}", l.id),
        false,
        html! {
            h1 { "Dead letter " code { (l.id) } }
            div class="scroll" { table { tbody {
                tr { th { "job id" } td { code { (l.id) } } }
                tr { th { "dead-letter id" } td { code { (l.dead_letter_id) } } }
                tr { th { "topic" } td { a href={ (at("/topics/")) (seg(topic)) } { (topic) } } }
                tr { th { "group" } td { (l.group) } }
                tr { th { "partition" } td { (l.partition) } }
                tr { th { "key" } td { (l.key.as_deref().unwrap_or("-")) } }
                tr { th { "attempts" } td { (l.attempts) } }
                tr { th { "dead-lettered" } td { (when(l.failed_at_ms)) } }
                tr { th { "original entry" } td { code { (l.entry_id) } } }
            } } }
            h2 { "Error" }
            pre class="error" { (l.error) }
            h2 { "Payload" }
            @if view.show_payloads {
                pre { (l.payload) }
            } @else {
                p class="muted" { "Hidden: payloads may hold personal data. Start the dashboard with --show-payloads to see them." }
            }
            @if view.can_change {
                form method="post" action={ (list) "/replay" } {
                    (form_fields(csrf, &list))
                    input type="hidden" name="ids" value=(l.id);
                    button type="submit" { "Replay in " (l.group) }
                }
            }
            p { a href=(list) { "All dead letters of " (topic) } }
        },
    )
}

pub(super) fn purge_confirm(view: &View, csrf: &str, topic: &str, count: usize) -> Markup {
    let list = at(&format!("/topics/{}/dead-letters", seg(topic)));
    layout(
        "Purge dead letters",
        false,
        html! {
            h1 { "Purge the dead letters of " (topic) "?" }
            p { "This deletes all " (count) " dead letters of every group of " (topic) ". They cannot be replayed afterwards." }
            @if view.can_change {
                form method="post" action={ (list) "/purge" } {
                    (form_fields(csrf, &list))
                    input type="hidden" name="confirm" value="yes";
                    button type="submit" class="danger" { "Purge " (count) " dead letters" }
                    " "
                    a href=(list) { "Keep them" }
                }
            } @else {
                p class="muted" { "This dashboard is read-only." }
            }
        },
    )
}

pub(super) fn login(csrf: &str, next: &str, needed: bool, failed: bool) -> Markup {
    layout(
        "Log in",
        false,
        html! {
            h1 { "Log in" }
            @if !needed {
                p { "This dashboard needs no token." } p { a href=(at("/")) { "Go to the topics" } }
            } @else {
                p { "Changes (replay, purge, pause, cancel) need the dashboard's token. Reading does not." }
                @if failed { p class="error" { "That is not the token." } }
                form method="post" action=(at("/login")) class="toolbar" {
                    (form_fields(csrf, next))
                    input type="password" name="token" placeholder="token" autofocus;
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}
