//! Errors a controller can turn into condition reasons. Never carries credentials.

use crate::models::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The BMC did not answer (DNS, connect, timeout, reset connection).
    #[error("BMC unreachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed verification (unknown CA, wrong name, expired).
    #[error("TLS verification failed: {0}")]
    TlsVerification(String),
    /// Wrong credentials or insufficient privilege (401/403).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// A resource the provider needs does not exist (404, no system).
    #[error("not found: {0}")]
    NotFound(String),
    /// The BMC lacks a feature the provider needs (no virtual media, no CD boot target ...).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The BMC is busy (in POST, 503 after retries): retry later.
    #[error("BMC busy: {0}")]
    BmcBusy(String),
    /// The BMC answered something we cannot use (bad JSON, an error status with its message).
    #[error("Redfish protocol error: {0}")]
    Protocol(String),
    /// The BMC understood a change and refused it (400, 409 or 422 to a POST, PATCH or DELETE):
    /// asking again the same way gets the same answer. E.g. a second virtual media device on a
    /// BMC that takes one at a time.
    #[error("refused by the BMC: {0}")]
    Refused(String),
    /// Bad configuration on our side (address, CA bundle, several systems without an id).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The BMC's response body exceeded `ClientConfig::max_body_bytes`; reading stopped there.
    #[error("BMC response too large: {what}: body exceeds the limit of {limit} bytes")]
    ResponseTooLarge { what: String, limit: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// CamelCase reason for a `metav1.Condition`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Unreachable(_) => "BMCUnreachable",
            Error::TlsVerification(_) => "BMCTLSVerificationFailed",
            Error::Authentication(_) => "BMCAuthenticationFailed",
            Error::NotFound(_) => "RedfishResourceNotFound",
            Error::NotSupported(_) => "RedfishFeatureNotSupported",
            Error::BmcBusy(_) => "BMCBusy",
            Error::Protocol(_) => "RedfishProtocolError",
            Error::Refused(_) => "RedfishRequestRefused",
            Error::Config(_) => "InvalidBMCConfiguration",
            Error::ResponseTooLarge { .. } => "RedfishResponseTooLarge",
        }
    }

    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable(_) | Error::BmcBusy(_) | Error::Protocol(_)
        )
    }
}

/// The HPE message id for "the system is in POST, try later".
pub const HPE_BUSY_IN_POST: &str = "UnableToModifyDuringSystemPOST";

/// Map an HTTP error status (and its body) to an error.
pub(crate) fn from_status(method: &str, path: &str, status: u16, body: &[u8]) -> Error {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let detail = parsed
        .as_ref()
        .map(|b| b.summary())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        });
    // A BMC's message ends up in a condition: keep it short whatever the BMC sends.
    let detail = truncate(detail, MAX_DETAIL_CHARS);
    let what = if detail.is_empty() {
        format!("{method} {path}: HTTP {status}")
    } else {
        format!("{method} {path}: HTTP {status}: {detail}")
    };
    if parsed.as_ref().is_some_and(|b| {
        b.message_ids()
            .iter()
            .any(|id| id.contains(HPE_BUSY_IN_POST))
    }) {
        return Error::BmcBusy(what);
    }
    match status {
        401 | 403 => Error::Authentication(what),
        404 => Error::NotFound(what),
        405 | 501 => Error::NotSupported(what),
        429 | 503 => Error::BmcBusy(what),
        400 | 409 | 422 if method != "GET" => Error::Refused(what),
        _ => Error::Protocol(what),
    }
}

/// Longest BMC-provided message text carried in an error.
const MAX_DETAIL_CHARS: usize = 512;

fn truncate(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} bytes in all)", &s[..i], s.len()),
        None => s,
    }
}

/// Map a transport error (reqwest, tower timeout) to an error, looking through its causes.
pub(crate) fn from_transport(err: &(dyn std::error::Error + 'static), address: &str) -> Error {
    let mut chain = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("invalid peer")
        || lower.contains("handshake")
        || lower.contains("notvalidforname")
    {
        return Error::TlsVerification(format!("{address}: {}", last_useful(&chain)));
    }
    if err.is::<tower::timeout::error::Elapsed>() || lower.contains("timed out") {
        return Error::Unreachable(format!("{address}: request timed out"));
    }
    Error::Unreachable(format!("{address}: {}", last_useful(&chain)))
}

fn last_useful(chain: &[String]) -> String {
    // The innermost cause is usually the most telling ("connection refused", "invalid peer certificate: UnknownIssuer").
    let mut parts: Vec<&str> = chain.iter().map(String::as_str).collect();
    parts.dedup();
    if parts.len() > 2 {
        parts = parts[parts.len() - 2..].to_vec();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        assert!(matches!(
            from_status("GET", "/x", 401, b""),
            Error::Authentication(_)
        ));
        assert!(matches!(
            from_status("GET", "/x", 404, b"{}"),
            Error::NotFound(_)
        ));
        assert!(matches!(
            from_status("GET", "/x", 503, b""),
            Error::BmcBusy(_)
        ));
        let hpe = br#"{"error":{"code":"iLO.0.10.ExtendedInfo","@Message.ExtendedInfo":[{"MessageId":"iLO.2.15.UnableToModifyDuringSystemPOST"}]}}"#;
        let e = from_status("PATCH", "/redfish/v1/Systems/1", 400, hpe);
        assert!(matches!(e, Error::BmcBusy(_)), "{e:?}");
        assert_eq!(e.reason(), "BMCBusy");
        let e = from_status("POST", "/x", 400, b"<html>oops</html>");
        assert!(e.to_string().contains("oops"), "{e}");
        // A BMC's long message is cut.
        let msgs: Vec<String> = (0..10_000)
            .map(|i| format!(r#"{{"MessageId":"Base.1.0.E{i}","Message":"message number {i}"}}"#))
            .collect();
        let body = format!(
            r#"{{"error":{{"code":"x","@Message.ExtendedInfo":[{}]}}}}"#,
            msgs.join(",")
        );
        let e = from_status("PATCH", "/x", 400, body.as_bytes());
        let text = e.to_string();
        assert!(text.len() < 700, "{} bytes: {text:.200}", text.len());
        assert!(
            text.contains("message number 0") && text.contains("bytes in all"),
            "{text}"
        );
    }
}
