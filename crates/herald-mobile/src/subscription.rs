//! Which topics a node consumes: those `mobile.kafka.topics` names or
//! matches that exist, and whose platform the node has credentials for. A
//! node that cannot send to APNs leaves APNs topics to the nodes that can:
//! in a shared consumer group it would otherwise be handed some of their
//! partitions and skip those messages (`herald pusher gcm` beside
//! `herald pusher apns`, as the seed runs them).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use regex::Regex;
use tracing::{info, warn};

use crate::Platform;
use crate::topic;

/// How long one listing of the brokers' topics may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon a failed listing is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The topics a node wants, by name and by pattern.
#[derive(Debug)]
pub(crate) struct Wanted {
    /// Topics named outright.
    names: Vec<String>,
    /// `^…` entries: regular expressions, as librdkafka reads them.
    patterns: Vec<Regex>,
    /// The platforms this node has a provider for.
    platforms: Vec<Platform>,
}

impl Wanted {
    /// Reads `topics`: comma-separated names and `^`-patterns.
    pub(crate) fn new(topics: &str, platforms: Vec<Platform>) -> Result<Self, String> {
        let mut wanted = Self {
            names: Vec::new(),
            patterns: Vec::new(),
            platforms,
        };
        for entry in topics.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if entry.starts_with('^') {
                let pattern = Regex::new(entry)
                    .map_err(|e| format!("mobile.kafka.topics: {entry:?} is not a pattern: {e}"))?;
                wanted.patterns.push(pattern);
            } else {
                wanted.names.push(entry.to_owned());
            }
        }
        Ok(wanted)
    }

    /// Of the `existing` topics, those to consume.
    pub(crate) fn select<'a>(
        &self,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> BTreeSet<String> {
        existing
            .into_iter()
            .filter(|t| {
                self.names.iter().any(|n| n == t) || self.patterns.iter().any(|p| p.is_match(t))
            })
            .filter(|t| topic::route(t).is_some_and(|r| self.platforms.contains(&r.platform)))
            .map(str::to_owned)
            .collect()
    }
}

/// Keeps `consumer` subscribed to the wanted topics as they are created and
/// deleted, listing them every `every`. Runs until aborted.
pub(crate) async fn follow(consumer: Arc<StreamConsumer>, wanted: Wanted, every: Duration) {
    let wanted = Arc::new(wanted);
    let mut current: Option<BTreeSet<String>> = None;
    let mut failing = false;
    loop {
        let (c, w) = (consumer.clone(), wanted.clone());
        // librdkafka's metadata call blocks its thread.
        let listed = tokio::task::spawn_blocking(move || {
            let metadata = c.fetch_metadata(None, LIST_TIMEOUT)?;
            Ok::<_, rdkafka::error::KafkaError>(
                w.select(metadata.topics().iter().map(|t| t.name())),
            )
        })
        .await
        .expect("listing topics does not panic");
        let wait = match listed {
            Ok(topics) => {
                failing = false;
                if current.as_ref() != Some(&topics) {
                    subscribe(&consumer, &topics);
                    current = Some(topics);
                }
                every
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "Kafka topics could not be listed; trying again.");
                }
                failing = true;
                RETRY.min(every)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn subscribe(consumer: &StreamConsumer, topics: &BTreeSet<String>) {
    if topics.is_empty() {
        consumer.unsubscribe();
        return info!("No Kafka topic to consume yet.");
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    match consumer.subscribe(&names) {
        Ok(()) => info!(topics = ?names, "Consuming Kafka topics."),
        Err(e) => warn!(error = %e, "Kafka subscription failed."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_takes_only_the_topics_of_platforms_it_can_send_to() {
        let default = crate::config::KafkaConfig::default().topics;
        let existing = [
            "push-game_apns_single",
            "push-game_gcm_massive",
            "push-game_webpush_single",
            "push-game-apns-feedbacks",
            "other",
        ];
        let apns = Wanted::new(&default, vec![Platform::Apns]).unwrap();
        assert_eq!(
            apns.select(existing),
            BTreeSet::from(["push-game_apns_single".to_owned()])
        );
        let both = Wanted::new(&default, vec![Platform::Gcm, Platform::WebPush]).unwrap();
        assert_eq!(
            both.select(existing),
            BTreeSet::from([
                "push-game_gcm_massive".to_owned(),
                "push-game_webpush_single".to_owned()
            ])
        );
    }

    #[test]
    fn names_are_taken_whole_and_patterns_as_patterns() {
        let w = Wanted::new(
            "push-a_gcm_single, ^push-b_.*",
            vec![Platform::Apns, Platform::Gcm],
        )
        .unwrap();
        let existing = [
            "push-a_gcm_single",
            "push-a_gcm_single2",
            "push-b_apns_massive",
            "push-c_apns_single",
        ];
        assert_eq!(
            w.select(existing),
            BTreeSet::from([
                "push-a_gcm_single".to_owned(),
                "push-b_apns_massive".to_owned()
            ])
        );
        assert!(Wanted::new("^push-(", vec![]).is_err());
    }
}
