//! Loads the configuration: defaults, then a TOML file, then `HERALD_…`
//! environment variables (`HERALD_SERVER__LISTEN=0.0.0.0:9000` sets
//! `server.listen`).

use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use herald_mobile::MobileConfig;
use herald_server::Config;
use serde::Serialize;

/// Every setting: the server's sections, and `[mobile]` for the mobile
/// pipeline, which lives in its own crate.
#[derive(Default, Serialize)]
pub(crate) struct Settings {
    #[serde(flatten)]
    pub(crate) server: Config,
    pub(crate) mobile: MobileConfig,
}

/// The effective configuration.
pub(crate) fn load(file: Option<&Path>) -> Result<Settings, String> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        figment = figment.merge(Toml::file(path));
    }
    // Lossy: a setting the environment gives as text is read as the number
    // or bool it names where the setting wants one.
    let figment = figment.merge(Environment);
    let mobile: MobileConfig = figment.extract_inner_lossy("mobile").map_err(described)?;
    // The server's sections refuse unknown keys: hand them everything but `mobile`.
    let mut rest: Dict = figment.extract_lossy().map_err(described)?;
    rest.remove("mobile");
    let server: Config = Figment::from(Serialized::defaults(rest))
        .extract_lossy()
        .map_err(described)?;
    server.validate().map_err(|e| e.to_string())?;
    mobile.validate()?;
    Ok(Settings { server, mobile })
}

/// `HERALD_SECTION__KEY=value` settings (`HERALD_SERVER__LISTEN` sets
/// `server.listen`), each value the text it is. figment's own `Env` reads
/// `83920174` as a number and `true` as a bool, which a string setting (a
/// password, a key) then refuses; here numbers and bools are read from the
/// text where a setting wants one (lossy extraction). A value in brackets
/// or braces is a list or a table (`HERALD_AUTH__API_KEYS=["…"]`).
struct Environment;

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        Metadata::named("`HERALD_` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Every setting lives in a section (`SECTION__KEY`); other `HERALD_`
        // variables (`HERALD_CONFIG` names the file) are not settings.
        let env = Env::prefixed("HERALD_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        let mut settings = Figment::new();
        for (key, text) in env.iter() {
            let trimmed = text.trim();
            let value: Value = if trimmed.starts_with(['[', '{']) {
                trimmed
                    .parse()
                    .unwrap_or_else(|_| Value::from(text.clone()))
            } else {
                Value::from(text)
            };
            settings = settings.merge(Serialized::default(key.as_str(), value));
        }
        Ok(Profile::Default.collect(settings.extract::<Dict>()?))
    }
}

/// Whether a setting named `key` holds a secret.
fn is_secret(key: &str) -> bool {
    ["secret", "password", "api_key", "credentials"]
        .iter()
        .any(|s| key.contains(s))
}

/// A configuration error as text, without the value of a secret setting:
/// the message ends up in terminals and logs.
fn described(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            if !e.path.iter().any(|part| is_secret(part)) {
                return e.to_string();
            }
            let key = e.path.join(".");
            match &e.kind {
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => {
                    format!("invalid value for {key} (not shown): expected {expected}")
                }
                _ => format!("invalid value for {key} (not shown)"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The default configuration as TOML, for `herald config default`.
pub(crate) fn default_toml() -> String {
    toml::to_string_pretty(&Settings::default()).unwrap_or_default()
}

/// `config` as TOML with every secret replaced, for `herald config check`:
/// its output ends up in terminals, logs and tickets.
pub(crate) fn redacted_toml(config: &Settings) -> String {
    let Ok(mut value) = toml::Value::try_from(config) else {
        return String::new();
    };
    redact(&mut value);
    toml::to_string_pretty(&value).unwrap_or_default()
}

/// Replaces non-empty strings under keys that name secrets, and the
/// credentials of URLs (`redis://user:pass@host`), at any depth.
fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                let secret = is_secret(key);
                match v {
                    toml::Value::String(s) if secret && !s.is_empty() => {
                        *s = "<redacted>".into();
                    }
                    toml::Value::Array(items) if secret => {
                        items.fill(toml::Value::String("<redacted>".into()));
                    }
                    _ => redact(v),
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        toml::Value::String(s) => *s = without_credentials(s),
        _ => {}
    }
}

/// `text` with the credentials a connection string may hold replaced: a
/// URL's user info (everything before the authority's last `@`, as a
/// password may hold one), and the value of a `password`/`pass` parameter,
/// in a query (`?…&password=…`) or a key=value string (`host=db password=…`).
fn without_credentials(text: &str) -> String {
    let mut out = text.to_owned();
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            out = format!("{scheme}://<redacted>@{}", &rest[at + 1..]);
        }
    }
    for key in ["password=", "pass="] {
        let mut from = 0;
        while let Some(found) = out[from..].find(key) {
            let start = from + found;
            let value = start + key.len();
            let named = start == 0 || matches!(out.as_bytes()[start - 1], b'?' | b'&' | b' ');
            if !named {
                from = value;
                continue;
            }
            let end = out[value..]
                .find(['&', ' ', '#'])
                .map_or(out.len(), |e| value + e);
            out.replace_range(value..end, "<redacted>");
            from = value + "<redacted>".len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let mut config = Settings::default();
        config.mobile.invalid_tokens.postgres_url = "postgres://pusher:pg-pw@db:5432/push".into();
        let server = &mut config.server;
        server.auth.secret = Some("hs256-secret".into());
        server.pushca.secret_key = Some("pushca-key".into());
        server.pushapi.basic_auth_password = "basic-pw".into();
        server.broker.redis.password = Some("redis-pw".into());
        server.auth.api_keys = vec!["api-key-1".into()];
        server.broker.redis.urls = vec![
            "redis://:url-pw@10.0.0.5:6379/0".into(),
            "redis://10.0.0.6:6379/a@b".into(),
        ];
        let text = redacted_toml(&config);
        for leaked in [
            "hs256-secret",
            "pushca-key",
            "basic-pw",
            "redis-pw",
            "url-pw",
            "api-key-1",
            "pg-pw",
        ] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        // Seven set here, and pushaas.password by its default.
        assert_eq!(text.matches("<redacted>").count(), 8, "{text}");
        assert!(
            text.contains("redis://<redacted>@10.0.0.5:6379/0"),
            "{text}"
        );
        assert!(text.contains("redis://10.0.0.6:6379/a@b"), "{text}");
        assert!(text.contains("basic_auth_user = \"app\""), "{text}");
    }

    #[test]
    fn every_form_of_connection_credentials_is_redacted() {
        for (given, shown) in [
            ("redis://:p@ss@h:6379", "redis://<redacted>@h:6379"),
            (
                "redis+unix:///run/redis.sock?db=0&pass=hunter2",
                "redis+unix:///run/redis.sock?db=0&pass=<redacted>",
            ),
            (
                "postgres://db/push?user=u&password=pw&sslmode=off",
                "postgres://db/push?user=u&password=<redacted>&sslmode=off",
            ),
            (
                "host=db user=u password=pw dbname=push",
                "host=db user=u password=<redacted> dbname=push",
            ),
            ("password=pw", "password=<redacted>"),
            ("redis://h:6379/0?bypass=1", "redis://h:6379/0?bypass=1"),
        ] {
            assert_eq!(without_credentials(given), shown, "{given}");
        }
    }
}
