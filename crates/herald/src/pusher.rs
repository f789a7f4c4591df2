//! `herald pusher apns|gcm`: the Pusher seed's command line. It reads the
//! seed's YAML configuration and its `PUSHER_…` environment variables
//! (viper's naming: `PUSHER_QUEUE_BROKERS` is `queue.brokers`), and runs the
//! mobile pipeline alone, as `pusher apns` and `pusher gcm` do. Herald's own
//! `HERALD_MOBILE__…` variables apply on top (docs/mobile.md).

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use herald_mobile::MobileConfig;
use herald_mobile::provider::apns::ApnsConfig;
use herald_mobile::provider::fcm::FcmConfig;
use serde_json::{Map, Value};

/// Which of the seed's two programs to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    Apns,
    Gcm,
}

/// The pipeline's settings from the seed's configuration: `file` (the
/// seed's default is `./config/default.yaml`; a missing default is no
/// error), then `PUSHER_…`, then `HERALD_MOBILE__…`.
pub(crate) fn load(
    file: &Path,
    explicit: bool,
    mode: Mode,
    production: bool,
) -> Result<MobileConfig, String> {
    let mut seed = Figment::new();
    if file.exists() {
        seed = seed.merge(Yaml::file(file));
    } else if explicit {
        return Err(format!("config file {} does not exist", file.display()));
    }
    // viper matches keys case-insensitively: so do we, by lower-casing the
    // file's keys as the environment's already are.
    let file_value: Value = seed.extract().map_err(|e| e.to_string())?;
    let seed: Value = Figment::from(Serialized::defaults(lowercased(file_value)))
        .merge(Env::prefixed("PUSHER_").split("_"))
        .extract()
        .map_err(|e| e.to_string())?;
    let mobile = from_seed(&seed, mode, production)?;
    let mobile: MobileConfig = Figment::from(Serialized::defaults(mobile))
        .merge(Env::prefixed("HERALD_MOBILE__").split("__"))
        .extract()
        .map_err(|e| e.to_string())?;
    mobile.validate()?;
    Ok(mobile)
}

fn lowercased(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lowercased(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(lowercased).collect()),
        other => other,
    }
}

/// The value at a dotted path of lower-case keys.
fn at<'a>(seed: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(seed, |v, key| v.get(key))
}

fn text(seed: &Value, path: &str) -> Option<String> {
    match at(seed, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(seed: &Value, path: &str) -> Option<u64> {
    match at(seed, path)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A list given as a YAML list or as a comma-separated string (viper's
/// `GetStringSlice` takes both).
fn list(seed: &Value, path: &str) -> Vec<String> {
    match at(seed, path) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn from_seed(seed: &Value, mode: Mode, production: bool) -> Result<MobileConfig, String> {
    let mut c = MobileConfig {
        enabled: true,
        production,
        ..MobileConfig::default()
    };
    // The key the seed's code reads, and the spelling its README gives the
    // variable (`PUSHER_GRACEFULLSHUTDOWNTIMEOUT`).
    let graceful = ["gracefulshutdowntimeout", "gracefullshutdowntimeout"];
    if let Some(secs) = graceful.iter().find_map(|key| number(seed, key)) {
        c.graceful_timeout = Duration::from_secs(secs);
    }
    let k = &mut c.kafka;
    let topics = list(seed, "queue.topics");
    if !topics.is_empty() {
        k.topics = topics.join(",");
    }
    if let Some(brokers) = text(seed, "queue.brokers") {
        k.brokers = brokers;
    }
    if let Some(group) = text(seed, "queue.group") {
        k.group = group;
    }
    if let Some(ms) = number(seed, "queue.sessiontimeout") {
        k.session_timeout = Duration::from_millis(ms);
    }
    if let Some(reset) = text(seed, "queue.offsetresetstrategy") {
        k.offset_reset = reset;
    }
    if at(seed, "feedback.reporters").is_some() {
        k.feedback = list(seed, "feedback.reporters")
            .iter()
            .any(|r| r == "kafka");
    }
    if let Some(brokers) = text(seed, "feedback.kafka.brokers") {
        k.feedback_brokers = brokers;
    }
    if list(seed, "stats.reporters").iter().any(|r| r == "statsd") {
        c.statsd.host = text(seed, "stats.statsd.host").unwrap_or_else(|| "localhost:8125".into());
        if let Some(prefix) = text(seed, "stats.statsd.prefix") {
            c.statsd.prefix = prefix;
        }
        if let Some(secs) = number(seed, "stats.flush.s") {
            c.statsd.flush_interval = Duration::from_secs(secs.max(1));
        }
    }
    if let Some(host) = text(seed, "invalidtoken.pg.host") {
        let port = number(seed, "invalidtoken.pg.port").unwrap_or(5432);
        let user = text(seed, "invalidtoken.pg.user").unwrap_or_default();
        let pass = text(seed, "invalidtoken.pg.pass").unwrap_or_default();
        let database = text(seed, "invalidtoken.pg.database").unwrap_or_default();
        let credentials = match (user.is_empty(), pass.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!("{}@", encoded(&user)),
            (false, false) => format!("{}:{}@", encoded(&user), encoded(&pass)),
        };
        c.invalid_tokens.postgres_url = format!(
            "postgres://{credentials}{host}:{port}/{}",
            encoded(&database)
        );
        if let Some(table) = text(seed, "invalidtoken.pg.table") {
            c.invalid_tokens.table = table;
        }
    }
    match mode {
        Mode::Apns => {
            if let Some(workers) = number(seed, "apns.concurrentworkers") {
                c.concurrency = usize::try_from(workers)
                    .unwrap_or(usize::MAX)
                    .clamp(1, herald_mobile::config::MAX_CONCURRENCY);
            }
            for app in list(seed, "apns.apps") {
                let cert = |key: &str| {
                    text(
                        seed,
                        &format!("apns.certs.{}.{key}", app.to_ascii_lowercase()),
                    )
                };
                let (Some(key_file), Some(key_id), Some(team_id), Some(topic)) = (
                    cert("authkeypath"),
                    cert("keyid"),
                    cert("teamid"),
                    cert("topic"),
                ) else {
                    return Err(format!(
                        "apns.certs.{app} needs authKeyPath, keyID, teamID and topic"
                    ));
                };
                c.apns.insert(
                    app.clone(),
                    ApnsConfig {
                        key_file: key_file.into(),
                        key_id,
                        team_id,
                        topic,
                        push_type: "alert".into(),
                        endpoint: None,
                        ca_file: None,
                        timeout: Duration::from_secs(10),
                    },
                );
            }
        }
        Mode::Gcm => {
            for app in list(seed, "gcm.apps") {
                let Some(json) = text(
                    seed,
                    &format!("gcm.firebasecredentials.{}", app.to_ascii_lowercase()),
                ) else {
                    return Err(format!(
                        "gcm.firebaseCredentials.{app} is missing: FCM HTTP v1 needs the \
                         app's service-account JSON (the legacy API keys no longer work)"
                    ));
                };
                c.fcm.insert(
                    app.clone(),
                    FcmConfig {
                        service_account_file: Default::default(),
                        credentials_json: Some(json),
                        project_id: None,
                        endpoint: None,
                        ca_file: None,
                        timeout: Duration::from_secs(10),
                    },
                );
            }
        }
    }
    Ok(c)
}

/// `s` percent-encoded for a URL's user, password or path segment.
fn encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readmes_spelling_of_the_shutdown_timeout_is_read_too() {
        let c = from_seed(&seed("gracefullShutdownTimeout: 7"), Mode::Apns, false).unwrap();
        assert_eq!(c.graceful_timeout, Duration::from_secs(7));
    }

    fn seed(yaml: &str) -> Value {
        lowercased(
            Figment::from(Yaml::string(yaml))
                .extract::<Value>()
                .unwrap(),
        )
    }

    const SEED: &str = r#"
gracefulShutdownTimeout: 12
apns:
  concurrentWorkers: 40
  apps: "game"
  certs:
    game:
      authKeyPath: /certs/authkey.p8
      keyID: "ABC123DEFG"
      teamID: "TEAM456"
      topic: "com.game.test"
gcm:
  apps: mygame
  firebaseCredentials:
    mygame: "{\"project_id\": \"p\"}"
queue:
  topics:
    - "^push-[^-_]+_(apns|gcm)[_-](single|massive)"
  brokers: "kafka:9092"
  group: pushers
  sessionTimeout: 6000
  offsetResetStrategy: earliest
feedback:
  reporters: [kafka]
  kafka:
    brokers: "feedback-kafka:9092"
stats:
  reporters: [statsd]
  flush:
    s: 5
  statsd:
    host: "statsd:8125"
    prefix: "push"
invalidToken:
  pg:
    table: "test_apns"
    host: db
    port: 8585
    user: pusher_user
    pass: "p@ss word"
    database: push
"#;

    #[test]
    fn the_seeds_yaml_maps_onto_the_pipeline() {
        let c = from_seed(&seed(SEED), Mode::Apns, true).unwrap();
        assert!(c.enabled && c.production);
        assert_eq!(c.graceful_timeout, Duration::from_secs(12));
        assert_eq!(c.concurrency, 40);
        assert_eq!(c.kafka.brokers, "kafka:9092");
        assert_eq!(c.kafka.group, "pushers");
        assert_eq!(c.kafka.offset_reset, "earliest");
        assert!(c.kafka.feedback);
        assert_eq!(c.kafka.feedback_brokers, "feedback-kafka:9092");
        assert_eq!(
            c.kafka.topics,
            "^push-[^-_]+_(apns|gcm)[_-](single|massive)"
        );
        assert_eq!(c.statsd.host, "statsd:8125");
        assert_eq!(c.statsd.prefix, "push");
        assert_eq!(
            c.invalid_tokens.postgres_url,
            "postgres://pusher_user:p%40ss%20word@db:8585/push"
        );
        assert_eq!(c.invalid_tokens.table, "test_apns");
        let game = &c.apns["game"];
        assert_eq!(
            (
                game.key_id.as_str(),
                game.team_id.as_str(),
                game.topic.as_str()
            ),
            ("ABC123DEFG", "TEAM456", "com.game.test")
        );
        assert!(c.fcm.is_empty(), "apns mode sends APNs only");

        let g = from_seed(&seed(SEED), Mode::Gcm, false).unwrap();
        assert!(g.apns.is_empty());
        assert_eq!(
            g.fcm["mygame"].credentials_json.as_deref(),
            Some(r#"{"project_id": "p"}"#)
        );
    }

    #[test]
    fn missing_credentials_are_named() {
        let err = from_seed(&seed("apns:\n  apps: shop\n"), Mode::Apns, false).unwrap_err();
        assert!(err.contains("apns.certs.shop"), "{err}");
        let err = from_seed(&seed("gcm:\n  apps: shop\n"), Mode::Gcm, false).unwrap_err();
        assert!(err.contains("firebaseCredentials.shop"), "{err}");
    }
}
