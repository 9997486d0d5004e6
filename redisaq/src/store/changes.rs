//! Change hints: after anything that moves partitions between a topic's consumers (an
//! assignment written, a consumer leaving, partitions raised, a pause) a message goes to
//! the topic's channel (and one that says when a partition's next delayed job is due,
//! after an enqueue made it the next), `redisaq:changes:{topic}`. Each worker listens on the channels of its
//! topics on one connection, so its consumers follow a change at once without reading
//! their groups every tick, and an idle worker costs Redis nothing for it. A hint is only
//! a hint: lost, it costs time, not correctness, since every consumer also looks at its
//! group each heartbeat interval. (On a Redis Cluster a message reaches the subscribers
//! of every node.)

use futures_util::{Stream, StreamExt};
use redis::aio::ConnectionLike;

use super::conn::Target;
use crate::error::Error;
use crate::keys;

/// Tells the consumers of `topic` to look at their groups now.
pub(crate) async fn announce(conn: &mut impl ConnectionLike, topic: &str) -> Result<(), Error> {
    redis::cmd("PUBLISH")
        .arg(keys::changes(topic))
        .arg(1)
        .exec_async(conn)
        .await?;
    Ok(())
}

/// A hint as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The topic's consumers should look at their groups.
    Look(&'static str),
    /// The next delayed job of a partition of the topic is due in this long
    /// ([`super::schedule`]).
    Delayed(&'static str, u32, std::time::Duration),
}

/// The hints of `topics` as they come. Ends when the connection does.
pub(crate) async fn listen(
    target: &Target,
    topics: &[&'static str],
) -> Result<impl Stream<Item = Change> + use<>, Error> {
    let mut pubsub = target.pubsub().await?;
    let channels: Vec<(String, &'static str)> = topics
        .iter()
        .map(|&topic| (keys::changes(topic), topic))
        .collect();
    for (channel, _) in &channels {
        pubsub.subscribe(channel).await?;
    }
    Ok(pubsub.into_on_message().filter_map(move |message| {
        let topic = channels
            .iter()
            .find(|(channel, _)| channel.as_str() == message.get_channel_name())
            .map(|(_, topic)| *topic);
        let change =
            topic.map(
                |topic| match super::schedule::parse_hint(message.get_payload_bytes()) {
                    Some((partition, wait)) => Change::Delayed(topic, partition, wait),
                    None => Change::Look(topic),
                },
            );
        std::future::ready(change)
    }))
}
