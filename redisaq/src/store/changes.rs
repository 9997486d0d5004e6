//! Change hints: after anything that moves partitions between a topic's consumers (an
//! assignment written, a consumer leaving, partitions raised) a message goes to the
//! topic's channel, `redisaq:changes:{topic}`. Each worker listens on the channels of its
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

/// The hints of `topics` as they come: each item names the topic. Ends when the
/// connection does.
pub(crate) async fn listen(
    target: &Target,
    topics: &[&'static str],
) -> Result<impl Stream<Item = &'static str> + use<>, Error> {
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
        std::future::ready(topic)
    }))
}
