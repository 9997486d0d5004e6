//! A worker binary without any `#[job]` handler fails at start and says what to do.

use redisaq_tests::{redis, start_error};

#[tokio::test]
async fn running_without_handlers_fails_with_a_clear_error() {
    let error = start_error(redisaq::Worker::new().redis_url(redis().url())).await;
    assert!(matches!(error, redisaq::Error::NoHandlers), "{error:?}");
    assert!(
        error.to_string().contains("#[redisaq::job(topic"),
        "{error}"
    );
}
