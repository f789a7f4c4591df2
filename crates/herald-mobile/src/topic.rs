//! Kafka topic names: which app and platform a notification is for, and
//! where its feedback goes. The names are the Pusher seed's.

use std::sync::LazyLock;

use regex::Regex;

use crate::Platform;

/// The seed's reading of a topic: `push-<app>[-_]<platform>…`, where the app
/// may itself contain `-` and `_` (`push-my_game_apns_massive` is `my_game`),
/// with Herald's `webpush` beside the seed's `apns` and `gcm`.
static ROUTE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^push-(\w+(?:[_-]\w+)*)[-_](gcm|apns|webpush)")
        .expect("the route pattern is valid")
});

/// Who a topic's notifications are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The app (the seed's "game"): picks credentials, the token table and tags.
    pub app: String,
    /// Which provider sends it.
    pub platform: Platform,
}

/// The app and platform named by `topic`, or `None` for a foreign topic.
pub fn route(topic: &str) -> Option<Route> {
    let caps = ROUTE.captures(topic)?;
    let platform = match &caps[2] {
        "apns" => Platform::Apns,
        "webpush" => Platform::WebPush,
        _ => Platform::Gcm,
    };
    Some(Route {
        app: caps[1].to_owned(),
        platform,
    })
}

/// The topic that receives the providers' answers for `route`.
pub fn feedback_topic(route: &Route) -> String {
    format!("push-{}-{}-feedbacks", route.app, route.platform.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(topic: &str) -> Option<(String, Platform)> {
        route(topic).map(|r| (r.app, r.platform))
    }

    #[test]
    fn topics_name_the_app_and_platform_as_the_seed_reads_them() {
        assert_eq!(
            parsed("push-game_apns_single"),
            Some(("game".into(), Platform::Apns))
        );
        assert_eq!(
            parsed("push-my_game_gcm-massive"),
            Some(("my_game".into(), Platform::Gcm))
        );
        assert_eq!(
            parsed("push-tower-defense-apns"),
            Some(("tower-defense".into(), Platform::Apns))
        );
        assert_eq!(parsed("push-game_web_single"), None);
        assert_eq!(parsed("pull-game_apns"), None);
        assert_eq!(parsed("push-_apns"), None);
    }

    #[test]
    fn webpush_topics_are_read_like_the_seeds() {
        assert_eq!(
            parsed("push-game_webpush_single"),
            Some(("game".into(), Platform::WebPush))
        );
        assert_eq!(
            parsed("push-my_game_webpush-massive"),
            Some(("my_game".into(), Platform::WebPush))
        );
        assert_eq!(
            parsed("push-tower-defense-webpush"),
            Some(("tower-defense".into(), Platform::WebPush))
        );
        // The longest app that leaves a platform behind it, as for the seed's.
        assert_eq!(
            parsed("push-game_apns_webpush_single"),
            Some(("game_apns".into(), Platform::WebPush))
        );
        assert_eq!(
            parsed("push-web_gcm_single"),
            Some(("web".into(), Platform::Gcm))
        );
        assert_eq!(parsed("push-game_webpus_single"), None);
        assert_eq!(parsed("push-_webpush"), None);
    }

    #[test]
    fn the_default_topic_pattern_matches_every_platform() {
        let pattern = Regex::new(&crate::config::KafkaConfig::default().topics).unwrap();
        for topic in [
            "push-game_apns_single",
            "push-game_gcm-massive",
            "push-game_webpush_single",
            "push-game_webpush-massive",
        ] {
            assert!(pattern.is_match(topic), "{topic}");
            assert!(route(topic).is_some(), "{topic}");
        }
        assert!(!pattern.is_match("push-game_webpush_other"));
        assert!(!pattern.is_match("push-game-webpush-feedbacks"));
    }

    #[test]
    fn feedback_goes_to_the_seeds_topic() {
        let r = route("push-game_gcm_single").unwrap();
        assert_eq!(feedback_topic(&r), "push-game-gcm-feedbacks");
        let r = route("push-game_webpush_single").unwrap();
        assert_eq!(feedback_topic(&r), "push-game-webpush-feedbacks");
    }
}
