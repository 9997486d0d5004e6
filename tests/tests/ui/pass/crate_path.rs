// redisaq reached through a re-export: `#[job(crate = "...")]` says where.
mod engine {
    pub use redisaq as queue;
}

use engine::queue::{job, Job, JobError};

#[job(topic = "renamed", crate = "crate::engine::queue")]
async fn renamed(job: Job<u64>) -> Result<(), JobError> {
    let _ = job.payload();
    Ok(())
}

fn main() {
    let _ = renamed::enqueue(1);
}
