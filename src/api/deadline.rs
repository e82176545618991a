//! The caller's gRPC deadline, from the `grpc-timeout` request header.

use std::time::Duration;

use tonic::Request;

/// The time the call gets, if the caller set a deadline: a little less than
/// the caller's, so the daemon ends the call itself (DEADLINE_EXCEEDED, the
/// MCP server told, the call logged) before tonic's own timer drops it.
/// The header is at most 8 digits and a unit (gRPC over HTTP/2); anything
/// else is ignored.
pub fn of<T>(request: &Request<T>) -> Option<Duration> {
    let given = parse(request.metadata().get("grpc-timeout")?.to_str().ok()?)?;
    Some(given.saturating_sub((given / 20).min(MAX_MARGIN)))
}

/// The most the daemon keeps back from a caller's deadline.
const MAX_MARGIN: Duration = Duration::from_millis(50);

/// tonic answers a call whose deadline passed in its own timer with
/// CANCELLED ("Timeout expired"); gRPC's code for that is DEADLINE_EXCEEDED.
/// The answer is trailers-only, so its status is in the headers.
pub fn expired_is_deadline_exceeded<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let expired = headers.get("grpc-status").is_some_and(|v| v == "1")
        && headers
            .get("grpc-message")
            .is_some_and(|m| m == "Timeout%20expired" || m == "Timeout expired");
    if expired {
        headers.insert("grpc-status", http::HeaderValue::from_static("4"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("the%20call%27s%20deadline%20passed"),
        );
    }
    response
}

fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::time::Duration;

    #[test]
    fn every_unit_and_nothing_else() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5x", "-1S", "123456789S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
