//! Compile-time behaviour of `#[job]`: what it accepts, and the diagnostics it gives for
//! what it rejects. Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p redisaq-tests --test compile_fail`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/*.rs");
}
