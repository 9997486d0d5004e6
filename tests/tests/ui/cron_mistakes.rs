use redisaq::{job, Job, JobError, Tick};

#[job(topic = "reports", cron = "61 * * * *", tz = "Mars/Olympus")]
async fn bad_schedule(_job: Job<Tick>) -> Result<(), JobError> {
    Ok(())
}

#[job(topic = "reports", group = "zoned", tz = "UTC")]
async fn zone_without_cron(_job: Job<Tick>) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
