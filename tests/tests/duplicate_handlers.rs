//! Two handlers for one (topic, group) would split the group's jobs between two
//! functions at random: the worker refuses to start and names both.

use redisaq::{job, Job, JobError};
use redisaq_tests::{redis, start_error};

#[job(topic = "dup", group = "same_group")]
async fn first_handler(_job: Job<String>) -> Result<(), JobError> {
    Ok(())
}

mod elsewhere {
    use redisaq::{job, Job, JobError};

    #[job(topic = "dup", group = "same_group")]
    pub async fn second_handler(_job: Job<String>) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test]
async fn two_handlers_for_one_group_fail_at_start() {
    let error = start_error(redisaq::Worker::new().redis_url(redis().url())).await;
    let message = error.to_string();
    assert!(
        matches!(error, redisaq::Error::DuplicateHandler { .. }),
        "{error:?}"
    );
    assert!(
        message.contains("first_handler") && message.contains("elsewhere::second_handler"),
        "{message}"
    );
    assert!(
        message.contains("`dup`") && message.contains("`same_group`"),
        "{message}"
    );
}
