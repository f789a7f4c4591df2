//! Kafka topic names: which app and platform a notification is for, and
//! where its feedback goes. The names are the Pusher seed's.

use std::sync::LazyLock;

use regex::Regex;

use crate::Platform;

/// The seed's reading of a topic: `push-<app>[-_]<platform>…`, where the app
/// may itself contain `-` and `_` (`push-my_game_apns_massive` is `my_game`).
static ROUTE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^push-(\w+(?:[_-]\w+)*)[-_](gcm|apns)").expect("the route pattern is valid")
});

/// Who a topic's notifications are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The app (the seed's "game"): picks credentials, the token table and tags.
    pub app: String,
    pub platform: Platform,
}

/// The app and platform named by `topic`, or `None` for a foreign topic.
pub fn route(topic: &str) -> Option<Route> {
    let caps = ROUTE.captures(topic)?;
    let platform = match &caps[2] {
        "apns" => Platform::Apns,
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
    fn feedback_goes_to_the_seeds_topic() {
        let r = route("push-game_gcm_single").unwrap();
        assert_eq!(feedback_topic(&r), "push-game-gcm-feedbacks");
    }
}
