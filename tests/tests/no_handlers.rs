//! A worker binary without any `#[job]` handler fails at start and says what to do.

#[tokio::test]
async fn running_without_handlers_fails_with_a_clear_error() {
    let error = redisaq::Worker::new()
        .redis_url(redisaq_tests::redis().url())
        .run_until(async {})
        .await
        .unwrap_err();
    assert!(matches!(error, redisaq::Error::NoHandlers), "{error:?}");
    assert!(
        error.to_string().contains("#[redisaq::job(topic"),
        "{error}"
    );
}
