//! Strict `application/x-www-form-urlencoded` request bodies (RFC 6749 §3.2, Appendix B).
//!
//! The body is size-limited; a non-form content type is `invalid_request`; a parameter sent without a
//! value counts as omitted (RFC 6749 §3.1); a single-valued parameter sent twice is `invalid_request`.

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{Request, header};

use crate::error::OAuthError;
use crate::http::AppState;

/// A parsed form body.
#[derive(Debug, Default)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Parses a form body.
    pub fn parse(bytes: &[u8]) -> Result<Self, OAuthError> {
        if std::str::from_utf8(bytes).is_err() {
            return Err(OAuthError::invalid_request("request body is not valid UTF-8"));
        }
        let pairs = form_urlencoded::parse(bytes)
            .filter(|(_, value)| !value.is_empty())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Self { pairs })
    }

    /// The value of a single-valued parameter; `invalid_request` if it was sent more than once.
    pub fn single(&self, name: &'static str) -> Result<Option<&str>, OAuthError> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(OAuthError::invalid_request(format!("parameter `{name}` is repeated")));
        }
        Ok(first)
    }

    /// A required single-valued parameter.
    pub fn required(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.single(name)?
            .ok_or_else(|| OAuthError::invalid_request(format!("missing parameter `{name}`")))
    }

    /// Every value of a parameter that may repeat (`resource`, `audience`).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl FromRequest<AppState> for Form {
    type Rejection = OAuthError;

    async fn from_request(request: Request<Body>, state: &AppState) -> Result<Self, OAuthError> {
        let limit = state.max_body_bytes();
        let headers = request.headers();
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(OAuthError::payload_too_large(limit));
        }
        if !is_form {
            return Err(OAuthError::invalid_request(
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|_| OAuthError::payload_too_large(limit))?;
        Self::parse(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repeated_single_values_are_refused_and_empty_values_omitted() {
        let form = Form::parse(b"grant_type=client_credentials&scope=a&scope=b&resource=x&resource=y&empty=").unwrap();
        assert_eq!(form.single("grant_type").unwrap(), Some("client_credentials"));
        assert_eq!(form.single("scope").unwrap_err().code(), "invalid_request");
        assert_eq!(form.all("resource").collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(form.single("empty").unwrap(), None);
        assert_eq!(form.required("missing").unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn decodes_plus_and_percent() {
        let form = Form::parse(b"scope=read+write%21").unwrap();
        assert_eq!(form.single("scope").unwrap(), Some("read write!"));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(form) = Form::parse(&bytes) {
                let _ = form.single("grant_type");
            }
        }

        #[test]
        fn round_trips(pairs in proptest::collection::vec(("[a-z_]{1,8}", ".{1,12}"), 0..8)) {
            let mut serializer = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs { serializer.append_pair(k, v); }
            let form = Form::parse(serializer.finish().as_bytes()).unwrap();
            for (k, v) in &pairs {
                prop_assert!(form.all(k).any(|x| x == v));
            }
        }
    }
}
