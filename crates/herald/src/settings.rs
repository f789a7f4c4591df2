//! Loads the configuration: defaults, then a TOML file, then `HERALD_…`
//! environment variables (`HERALD_SERVER__LISTEN=0.0.0.0:9000` sets
//! `server.listen`).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Dict;
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
    let figment = figment.merge(
        Env::prefixed("HERALD_")
            // Every setting lives in a section (`SECTION__KEY`); other
            // `HERALD_` variables (`HERALD_CONFIG` names the file) are not settings.
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    let mobile: MobileConfig = figment.extract_inner("mobile").map_err(|e| e.to_string())?;
    // The server's sections refuse unknown keys: hand them everything but `mobile`.
    let mut rest: Dict = figment.extract().map_err(|e| e.to_string())?;
    rest.remove("mobile");
    let server: Config = Figment::from(Serialized::defaults(rest))
        .extract()
        .map_err(|e| e.to_string())?;
    server.validate().map_err(|e| e.to_string())?;
    mobile.validate()?;
    Ok(Settings { server, mobile })
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
                let secret = ["secret", "password", "api_key", "credentials"]
                    .iter()
                    .any(|s| key.contains(s));
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
        toml::Value::String(s) => {
            if let Some((scheme, rest)) = s.split_once("://")
                && let Some((credentials, host)) = rest.split_once('@')
                && !credentials.contains('/')
            {
                *s = format!("{scheme}://<redacted>@{host}");
            }
        }
        _ => {}
    }
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
}
