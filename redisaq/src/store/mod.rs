//! The beginning of the storage layer: Redis operations that both the consumer and the
//! admin need, in one place, so that neither reaches into the other.

pub(crate) mod due;
pub(crate) mod group;
pub(crate) mod stream;
