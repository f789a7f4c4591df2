//! Loads the configuration: defaults, then a TOML file, then `HERALD_…`
//! environment variables (`HERALD_SERVER__LISTEN=0.0.0.0:9000` sets
//! `server.listen`).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use herald_server::Config;

/// The effective configuration.
pub(crate) fn load(file: Option<&Path>) -> Result<Config, String> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        figment = figment.merge(Toml::file(path));
    }
    let config: Config = figment
        .merge(
            Env::prefixed("HERALD_")
                // Every setting lives in a section (`SECTION__KEY`); other
                // `HERALD_` variables (`HERALD_CONFIG` names the file) are not settings.
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        )
        .extract()
        .map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The default configuration as TOML, for `herald config default`.
pub(crate) fn default_toml() -> String {
    toml::to_string_pretty(&Config::default()).unwrap_or_default()
}
