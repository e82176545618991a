//! The size bound on request messages, and the status an oversized one gets.

use http::HeaderValue;

/// Largest request message accepted. The largest valid request (128 env
/// values of 8 KiB and 256 arguments of 2 KiB) stays well below it.
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// tonic refuses an oversized message with OUT_OF_RANGE before any handler
/// runs; gRPC's convention, and this API's, is RESOURCE_EXHAUSTED. The
/// refusal is a trailers-only response, so its status is in the headers.
pub fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if oversized {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        // grpc-message is percent-encoded; this text has only spaces to encode.
        let message = format!(
            "request message larger than {} MiB",
            MAX_REQUEST_BYTES / (1024 * 1024)
        )
        .replace(' ', "%20");
        if let Ok(value) = HeaderValue::try_from(message) {
            headers.insert("grpc-message", value);
        }
    }
    response
}
