//! `redisaq-chaos`: a repeatable chaos run. It starts its own `redis-server` (with AOF,
//! so a restart keeps what was acknowledged) and a second one as the side-effect sink,
//! several worker processes (this binary with `--worker`) and a producer, and for the
//! whole run injects faults at random: kill -9 and restart of workers, SIGSTOP past the
//! heartbeat TTL, Redis restarts, `DEBUG SLEEP`, `CLIENT KILL`, partition raises,
//! consumers joining and leaving. Then it lets the fleet drain and checks, from what the
//! handlers recorded: jobs lost, jobs left pending, jobs run twice, fencing violations
//! and dead letters.
//!
//! Two groups read the topic: one runs single jobs, one batches. Each handler records its
//! side effect in the sink with the job's fencing token; the sink refuses (and counts as
//! a violation) an effect whose token is older than the newest it has seen for that
//! partition and group, which is how a handler would guard its own side effects.
//!
//! The seed decides the faults and their timing, so a failing run can be replayed with
//! `--seed` (the processes' own timing still varies). Exit code 0 when nothing was lost,
//! left pending or accepted out of order; 1 otherwise.
//!
//! ```sh
//! cargo run --release -p redisaq-chaos -- --minutes 10
//! cargo run -p redisaq-chaos -- --seconds 60 --seed 1 --json
//! ```

mod faults;
mod jobs;
mod report;

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(name = "redisaq-chaos", version, about)]
pub struct Args {
    /// How long to inject faults, in minutes (overrides `--seconds`).
    #[arg(long)]
    minutes: Option<f64>,
    /// How long to inject faults, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the fault schedule (random when not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Worker processes at the start (consumers join and leave around this).
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Jobs enqueued per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// How long the fleet may take to drain after the faults stop, in seconds.
    #[arg(long, default_value_t = 180)]
    drain: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Run as one of the worker processes (used by the run itself).
    #[arg(long, hide = true)]
    worker: bool,
}

impl Args {
    fn duration(&self) -> Duration {
        match self.minutes {
            Some(minutes) => Duration::from_secs_f64(minutes * 60.0),
            None => Duration::from_secs(self.seconds),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.worker {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        return match runtime.block_on(jobs::work()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e}");
                std::process::ExitCode::from(1)
            }
        };
    }
    // One thread: the child processes die with the thread that started them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(faults::run(args)) {
        Ok(outcome) if outcome.passed() => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("redisaq-chaos: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
