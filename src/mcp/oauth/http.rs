//! Every HTTP request of the OAuth machinery (metadata discovery, token
//! requests) goes through the daemon's outbound policy: metadata documents
//! are attacker-controlled input, and the URLs in them could point anywhere.

use std::time::Duration;

use futures::StreamExt;
use rmcp::transport::auth::{
    OAuthHttpClient, OAuthHttpClientError, OAuthHttpClientFuture, OAuthHttpRedirectPolicy,
    OAuthHttpRequest,
};

use crate::mcp::outbound::OutboundPolicy;

/// Largest response body read (metadata documents and token responses are
/// small; anything bigger is not one).
const MAX_BODY: usize = 1024 * 1024;
/// A request with no timeout of its own gets this one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// rmcp's [`OAuthHttpClient`] on reqwest clients that check every address
/// (as resolved, and again at connect time) against the outbound policy.
pub(crate) struct PolicedHttp {
    policy: OutboundPolicy,
    /// Follows redirects the policy allows.
    follow: reqwest::Client,
    /// Returns redirects as they are (token requests).
    stop: reqwest::Client,
}

impl PolicedHttp {
    pub(crate) fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    pub(crate) fn new(policy: OutboundPolicy, connect_timeout: Duration) -> reqwest::Result<Self> {
        let follow = policy
            .apply(reqwest::Client::builder().connect_timeout(connect_timeout))
            .build()?;
        let stop = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .no_proxy()
            .dns_resolver(policy.resolver())
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(PolicedHttp {
            policy,
            follow,
            stop,
        })
    }
}

fn boxed(error: impl std::error::Error + Send + Sync + 'static) -> OAuthHttpClientError {
    Box::new(error)
}

#[derive(Debug, thiserror::Error)]
#[error("the response of {0} is larger than {MAX_BODY} bytes")]
struct TooLarge(String);

impl PolicedHttp {
    /// Sends `request` under the policy, following redirects or not, and
    /// reads at most [`MAX_BODY`] of the answer.
    pub(super) async fn send(
        &self,
        request: http::Request<Vec<u8>>,
        follow_redirects: bool,
        timeout: Option<Duration>,
    ) -> Result<http::Response<Vec<u8>>, OAuthHttpClientError> {
        let client = if follow_redirects {
            &self.follow
        } else {
            &self.stop
        };
        let mut request = reqwest::Request::try_from(request).map_err(boxed)?;
        *request.timeout_mut() = Some(timeout.unwrap_or(DEFAULT_TIMEOUT));
        // IP literals never reach the resolver: check the URL first.
        self.policy.check_url(request.url()).await.map_err(boxed)?;
        let target = format!(
            "{}://{}",
            request.url().scheme(),
            request.url().host_str().unwrap_or_default()
        );
        let response = client.execute(request).await.map_err(boxed)?;
        let mut answer = http::Response::builder()
            .status(response.status())
            .version(response.version());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(boxed)?;
            if body.len() + chunk.len() > MAX_BODY {
                return Err(boxed(TooLarge(target)));
            }
            body.extend_from_slice(&chunk);
        }
        answer.body(body).map_err(boxed)
    }
}

impl OAuthHttpClient for PolicedHttp {
    fn execute(&self, request: OAuthHttpRequest) -> OAuthHttpClientFuture<'_> {
        Box::pin(async move {
            let follow = !matches!(request.redirect_policy, OAuthHttpRedirectPolicy::Stop);
            self.send(request.request, follow, request.timeout).await
        })
    }
}
