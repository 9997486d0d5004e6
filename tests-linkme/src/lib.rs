//! Nothing but the test: see `tests/linkme.rs`.
