//! The client credentials grant (the MCP OAuth client credentials extension,
//! SEP-1046): discovery from the server's challenge, then a token request
//! authenticated with a client secret or a signed JWT (RFC 7523). rmcp does
//! all of it; mcpd supplies the HTTP client, the scopes and the resource.

use std::sync::Arc;

use oauth2::TokenResponse;
use rmcp::transport::{
    AuthorizationManager, ClientCredentialsConfig, JwtSigningAlgorithm, OAuthHttpClient,
};
use tokio::time::Instant;

use super::Token;
use crate::{
    mcp::describe,
    model::{ClientCredentials, ClientSecret},
};

/// Gets an access token for the MCP server at `server`, starting from the
/// `WWW-Authenticate` challenge of its 401 (or plain discovery without one).
/// The error says, in words, which step failed.
pub(super) async fn obtain(
    http: Arc<dyn OAuthHttpClient>,
    server: &url::Url,
    challenge: Option<&str>,
    credentials: &ClientCredentials,
    scopes: &[String],
) -> Result<Token, String> {
    let mut manager = AuthorizationManager::new_with_oauth_http_client(server.as_str(), http)
        .await
        .map_err(|e| format!("OAuth set-up failed: {}", describe::quoted(&e.to_string())))?;
    let resolution = manager
        .resolve_metadata_from_challenge(challenge)
        .await
        .map_err(|e| {
            format!(
                "could not discover the server's authorization server: {}",
                describe::quoted(&e.to_string())
            )
        })?;
    manager.set_metadata(resolution.metadata);
    let scopes = if scopes.is_empty() {
        manager.select_initial_scopes(&[]).await
    } else {
        scopes.to_vec()
    };
    // The resource indicator (RFC 8707): the server's canonical URL.
    let resource = Some(server.to_string());
    let config = match &credentials.secret {
        ClientSecret::Secret(secret) => ClientCredentialsConfig::ClientSecret {
            client_id: credentials.client_id.clone(),
            client_secret: secret.clone(),
            scopes,
            resource,
        },
        ClientSecret::PrivateKeyJwt { pem, algorithm } => ClientCredentialsConfig::PrivateKeyJwt {
            client_id: credentials.client_id.clone(),
            signing_key: pem.as_bytes().to_vec(),
            signing_algorithm: algorithm_of(algorithm)?,
            token_endpoint_audience: None,
            scopes,
            resource,
        },
    };
    let refused = |e: rmcp::transport::AuthError| {
        format!(
            "the authorization server did not grant a token to client {:?}: {}",
            credentials.client_id,
            describe::quoted(&e.to_string())
        )
    };
    manager
        .validate_client_credentials_metadata(&config)
        .map_err(refused)?;
    manager
        .configure_client_credentials(&config)
        .map_err(refused)?;
    let response = manager
        .exchange_client_credentials(&config)
        .await
        .map_err(refused)?;
    Ok(Token {
        access: response.access_token().secret().clone(),
        expires_at: response.expires_in().map(|ttl| Instant::now() + ttl),
    })
}

fn algorithm_of(name: &str) -> Result<JwtSigningAlgorithm, String> {
    Ok(match name {
        "RS256" => JwtSigningAlgorithm::RS256,
        "RS384" => JwtSigningAlgorithm::RS384,
        "RS512" => JwtSigningAlgorithm::RS512,
        "ES256" => JwtSigningAlgorithm::ES256,
        "ES384" => JwtSigningAlgorithm::ES384,
        other => return Err(format!("unknown JWT signing algorithm {other:?}")),
    })
}
