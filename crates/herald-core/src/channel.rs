//! Channel names and the app (tenant) namespace they live in.

use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = 200;

/// The app every channel belongs to when no app is named.
pub const DEFAULT_APP: &str = "default";

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_NAME_LEN} bytes")]
    TooLong,
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 and _ - = @ . : ; !")]
    BadChar(char),
}

/// A channel inside one app: the key of everything the hub stores.
///
/// Cheap to clone: both parts are shared strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// The tenant namespace; channels of different apps never meet.
    app: Arc<str>,
    /// The validated channel name.
    name: Arc<str>,
}

impl ChannelKey {
    /// Validates `name` and places it in `app`.
    pub fn new(app: &Arc<str>, name: &str) -> Result<Self, ChannelNameError> {
        validate_name(name)?;
        Ok(Self {
            app: app.clone(),
            name: Arc::from(name),
        })
    }

    /// The app this channel belongs to.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The channel name as clients see it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared app handle, for building sibling keys without allocating.
    pub fn app_arc(&self) -> &Arc<str> {
        &self.app
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Checks a channel name: 1..=200 bytes of `A-Z a-z 0-9 _ - = @ . : ; !`.
///
/// `,` separates channels in query strings and `/` separates them in push-stream
/// paths, so neither may appear inside a name.
pub fn validate_name(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_CHANNEL_NAME_LEN {
        return Err(ChannelNameError::TooLong);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-=@.:;!".contains(*c)))
    {
        Some(c) => Err(ChannelNameError::BadChar(c)),
        None => Ok(()),
    }
}

/// Matches `name` against a pattern with at most one `*`, which stands for
/// any run of characters (`chat:*`, `*:log`, `*`).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, suffix)) => {
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_around_their_one_star() {
        assert!(pattern_matches("a*z", "az") && pattern_matches("a*z", "abcz"));
        assert!(!pattern_matches("a*z", "z") && !pattern_matches("a*z", "za"));
        assert!(pattern_matches("x", "x") && !pattern_matches("x", "xy"));
        assert!(pattern_matches("*", "anything"));
    }

    #[test]
    fn accepts_common_names() {
        for name in ["a", "news", "user:42", "room-1.b", "x_y=z@host;v!"] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_name(""), Err(ChannelNameError::Empty));
        assert_eq!(
            validate_name(&"a".repeat(201)),
            Err(ChannelNameError::TooLong)
        );
        assert_eq!(validate_name("a,b"), Err(ChannelNameError::BadChar(',')));
        assert_eq!(validate_name("a/b"), Err(ChannelNameError::BadChar('/')));
        assert_eq!(validate_name("é"), Err(ChannelNameError::BadChar('é')));
    }

    #[test]
    fn apps_separate_channels() {
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert_ne!(
            ChannelKey::new(&a, "x").unwrap(),
            ChannelKey::new(&b, "x").unwrap()
        );
    }
}
