//! Title and rendition identifiers: `[a-z0-9][a-z0-9_-]{0,63}`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier {0:?} is longer than 64 characters")]
    TooLong(String),
    #[error("identifier {0:?} must match [a-z0-9][a-z0-9_-]{{0,63}}")]
    BadChar(String),
}

/// Checks the identifier grammar shared by titles and renditions.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(IdError::Empty);
    };
    if bytes.len() > 64 {
        return Err(IdError::TooLong(s.to_owned()));
    }
    let lower_or_digit = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !lower_or_digit(first) || !bytes[1..].iter().all(|&b| lower_or_digit(b) || b == b'_' || b == b'-') {
        return Err(IdError::BadChar(s.to_owned()));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_id(&s)?;
                Ok(Self(s))
            }
            /// The identifier text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A title identifier, e.g. `bbb`.
    TitleId
);
id_type!(
    /// A rendition identifier, e.g. `v720` or `audio`.
    RenditionId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in ["a", "bbb", "v720", "t-1_x", "0", &"a".repeat(64)] {
            assert!(TitleId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "-a", "_a", "A", "a.b", "..", "a/b", "a\\b", "é", &"a".repeat(65), "a b", "%2e"] {
            assert!(TitleId::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<TitleId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<TitleId>("\"../x\"").is_err());
    }
}
