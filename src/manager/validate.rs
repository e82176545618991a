//! Request validation: every field bounded, every refusal says what to fix.

use std::collections::{BTreeMap, HashMap};

use super::ManagerError;
use crate::model::{ClientCredentials, ClientSecret, OAuth, RegisteredClient, Transport};

pub const MAX_SERVER_NAME: usize = 64;
pub const MAX_ORGANIZATION_ID: usize = 128;
pub const MAX_COMMAND: usize = 4096;
pub const MAX_ARGS: usize = 256;
pub const MAX_ARG: usize = 2048;
pub const MAX_ENV: usize = 128;
pub const MAX_ENV_VALUE: usize = 8 * 1024;
pub const MAX_URL: usize = 2048;
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_VALUE: usize = 8 * 1024;
pub const MAX_ID: usize = 64;

/// Headers the MCP transports set themselves.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "connection",
    "content-length",
    "content-type",
    "host",
    "last-event-id",
    "mcp-protocol-version",
    "mcp-session-id",
    "transfer-encoding",
];

/// The transport as a caller asked for it, before validation.
#[derive(Clone, PartialEq, Eq)]
pub enum TransportRequest {
    Stdio {
        command: String,
        args: Vec<String>,
        env: HashMap<String, String>,
    },
    StreamableHttp {
        url: String,
        headers: HashMap<String, String>,
        oauth: Option<OAuthRequest>,
    },
    Sse {
        url: String,
        headers: HashMap<String, String>,
    },
}

/// The `oauth` block of a streamable HTTP transport, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuthRequest {
    pub client_credentials: Option<ClientCredentialsRequest>,
    pub scopes: Vec<String>,
    /// A pre-registered client for the authorization code flow; empty: none.
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientCredentialsRequest {
    pub client_id: String,
    pub secret: Option<ClientSecret>,
}

impl std::fmt::Debug for ClientCredentialsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentialsRequest")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret.as_ref().map(ClientSecret::name))
            .finish()
    }
}

pub const MAX_CLIENT_ID: usize = 256;
pub const MAX_CLIENT_SECRET: usize = 4 * 1024;
pub const MAX_PRIVATE_KEY: usize = 16 * 1024;
pub const MAX_SCOPES: usize = 32;
pub const MAX_SCOPE: usize = 256;
/// What rmcp signs private_key_jwt assertions with.
pub const JWT_ALGORITHMS: [&str; 5] = ["RS256", "RS384", "RS512", "ES256", "ES384"];

fn invalid(message: impl Into<String>) -> ManagerError {
    ManagerError::InvalidArgument(message.into())
}

pub fn organization_id(org: &str) -> Result<(), ManagerError> {
    if org.is_empty() || org.len() > MAX_ORGANIZATION_ID || org.chars().any(char::is_control) {
        return Err(invalid(format!(
            "organization id must be 1 to {MAX_ORGANIZATION_ID} printable characters"
        )));
    }
    Ok(())
}

pub fn server_name(name: &str) -> Result<(), ManagerError> {
    if name.is_empty() {
        return Err(invalid("server_name is required"));
    }
    if name.len() > MAX_SERVER_NAME {
        return Err(invalid(format!(
            "server_name is {} characters long; at most {MAX_SERVER_NAME} are allowed",
            name.len()
        )));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(format!(
            "server_name {name:?} must start with a letter or digit and contain only letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// A list filter on server names: a start of a valid name (it may end in
/// any allowed character, or be empty for no filter).
pub fn name_prefix(prefix: &str) -> Result<(), ManagerError> {
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.len() > MAX_SERVER_NAME
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(format!(
            "name_prefix {prefix:?} cannot start any server name: names are at most {MAX_SERVER_NAME} letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Longest tool prefix: a qualified name stays readable.
pub const MAX_TOOL_PREFIX: usize = 64;

/// A tool prefix: empty, or characters MCP allows in tool names.
pub fn tool_prefix(prefix: &str) -> Result<(), ManagerError> {
    if prefix.len() > MAX_TOOL_PREFIX {
        return Err(invalid(format!(
            "tool_prefix is {} characters long; at most {MAX_TOOL_PREFIX} are allowed",
            prefix.len()
        )));
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(format!(
            "tool_prefix {prefix:?} may contain only letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

pub fn server_id(id: &str) -> Result<(), ManagerError> {
    if id.is_empty() {
        return Err(invalid("server_id is required"));
    }
    if id.len() > MAX_ID || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(invalid(format!("server_id {id:?} is not a valid id")));
    }
    Ok(())
}

pub fn tool_name(name: &str) -> Result<(), ManagerError> {
    if name.is_empty() {
        return Err(invalid("tool_name is required"));
    }
    if name.len() > super::tools::MAX_TOOL_NAME || name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "tool_name must be 1 to {} printable characters",
            super::tools::MAX_TOOL_NAME
        )));
    }
    Ok(())
}

pub fn transport(request: Option<TransportRequest>) -> Result<Transport, ManagerError> {
    match request {
        None => Err(invalid(
            "transport is required: set one of stdio, streamable_http or sse",
        )),
        Some(TransportRequest::Stdio { command, args, env }) => {
            if command.trim().is_empty() {
                return Err(invalid("stdio.command is required"));
            }
            bounded_text("stdio.command", &command, MAX_COMMAND)?;
            if args.len() > MAX_ARGS {
                return Err(invalid(format!(
                    "stdio.args has {} entries; at most {MAX_ARGS} are allowed",
                    args.len()
                )));
            }
            for (i, arg) in args.iter().enumerate() {
                bounded_text(&format!("stdio.args[{i}]"), arg, MAX_ARG)?;
            }
            if env.len() > MAX_ENV {
                return Err(invalid(format!(
                    "stdio.env has {} entries; at most {MAX_ENV} are allowed",
                    env.len()
                )));
            }
            for (name, value) in &env {
                let valid_name = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.len() <= 256
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid_name {
                    return Err(invalid(format!(
                        "stdio.env name {name:?} must be letters, digits and '_' and not start with a digit"
                    )));
                }
                // The value is a secret: the message names the variable only.
                if value.len() > MAX_ENV_VALUE || value.contains('\0') {
                    return Err(invalid(format!(
                        "stdio.env value of {name} must be at most {MAX_ENV_VALUE} bytes without NUL"
                    )));
                }
            }
            Ok(Transport::Stdio {
                command,
                args,
                env: env.into_iter().collect(),
            })
        }
        Some(TransportRequest::StreamableHttp {
            url,
            headers,
            oauth,
        }) => {
            let headers = http_headers("streamable_http.headers", headers)?;
            let oauth = oauth.map(oauth_settings).transpose()?;
            if oauth.is_some() && headers.contains_key("authorization") {
                return Err(invalid(
                    "streamable_http: set either an Authorization header or oauth, not both (with oauth, mcpd sends the tokens it obtains)",
                ));
            }
            Ok(Transport::StreamableHttp {
                url: http_url("streamable_http.url", &url)?,
                headers,
                oauth,
            })
        }
        Some(TransportRequest::Sse { url, headers }) => Ok(Transport::Sse {
            url: http_url("sse.url", &url)?,
            headers: http_headers("sse.headers", headers)?,
        }),
    }
}

fn oauth_settings(request: OAuthRequest) -> Result<OAuth, ManagerError> {
    const FIELD: &str = "streamable_http.oauth";
    let client_credentials = request
        .client_credentials
        .map(client_credentials)
        .transpose()?;
    let client = match (
        request.client_id.is_empty(),
        request.client_secret.is_empty(),
    ) {
        (true, true) => None,
        (true, false) => {
            return Err(invalid(format!(
                "{FIELD}.client_secret needs its client_id"
            )));
        }
        (false, _) => {
            client_id(&format!("{FIELD}.client_id"), &request.client_id)?;
            let secret = (!request.client_secret.is_empty())
                .then(|| client_secret(&format!("{FIELD}.client_secret"), request.client_secret))
                .transpose()?;
            Some(RegisteredClient {
                client_id: request.client_id,
                client_secret: secret,
            })
        }
    };
    if client.is_some() && client_credentials.is_some() {
        return Err(invalid(format!(
            "{FIELD}: set client_credentials (machine to machine) or client_id (authorization code flow), not both"
        )));
    }
    if request.scopes.len() > MAX_SCOPES {
        return Err(invalid(format!(
            "{FIELD}.scopes has {} entries; at most {MAX_SCOPES} are allowed",
            request.scopes.len()
        )));
    }
    for scope in &request.scopes {
        // RFC 6749 scope-token: visible ASCII except '"' and '\\'.
        let valid = !scope.is_empty()
            && scope.len() <= MAX_SCOPE
            && scope
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
        if !valid {
            return Err(invalid(format!(
                "{FIELD}.scopes: {scope:?} is not a scope (1 to {MAX_SCOPE} visible ASCII characters, no quotes or backslashes)"
            )));
        }
    }
    Ok(OAuth {
        client_credentials,
        scopes: request.scopes,
        client,
        grant: None,
    })
}

fn client_id(field: &str, id: &str) -> Result<(), ManagerError> {
    if id.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if id.len() > MAX_CLIENT_ID || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "{field} must be at most {MAX_CLIENT_ID} visible ASCII characters"
        )));
    }
    Ok(())
}

/// Secrets are named, never quoted.
fn client_secret(field: &str, secret: String) -> Result<String, ManagerError> {
    if secret.is_empty()
        || secret.len() > MAX_CLIENT_SECRET
        || !secret.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        return Err(invalid(format!(
            "{field} must be 1 to {MAX_CLIENT_SECRET} printable ASCII characters"
        )));
    }
    Ok(secret)
}

fn client_credentials(
    credentials: ClientCredentialsRequest,
) -> Result<ClientCredentials, ManagerError> {
    const FIELD: &str = "streamable_http.oauth.client_credentials";
    client_id(&format!("{FIELD}.client_id"), &credentials.client_id)?;
    let secret = match credentials.secret {
        None => {
            return Err(invalid(format!(
                "{FIELD} needs client_secret or private_key_jwt"
            )));
        }
        Some(ClientSecret::Secret(secret)) => {
            ClientSecret::Secret(client_secret(&format!("{FIELD}.client_secret"), secret)?)
        }
        Some(ClientSecret::PrivateKeyJwt { pem, algorithm }) => {
            if !JWT_ALGORITHMS.contains(&algorithm.as_str()) {
                return Err(invalid(format!(
                    "{FIELD}.private_key_jwt.algorithm must be one of {}",
                    JWT_ALGORITHMS.join(", ")
                )));
            }
            if pem.len() > MAX_PRIVATE_KEY || !pem.contains("-----BEGIN ") {
                return Err(invalid(format!(
                    "{FIELD}.private_key_jwt.private_key_pem must be a PEM key of at most {MAX_PRIVATE_KEY} bytes"
                )));
            }
            ClientSecret::PrivateKeyJwt { pem, algorithm }
        }
    };
    Ok(ClientCredentials {
        client_id: credentials.client_id,
        secret,
    })
}

fn bounded_text(field: &str, value: &str, max: usize) -> Result<(), ManagerError> {
    if value.len() > max {
        return Err(invalid(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(invalid(format!("{field} must not contain NUL")));
    }
    Ok(())
}

fn http_url(field: &str, raw: &str) -> Result<url::Url, ManagerError> {
    if raw.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if raw.len() > MAX_URL {
        return Err(invalid(format!(
            "{field} is {} bytes long; at most {MAX_URL} are allowed",
            raw.len()
        )));
    }
    let url =
        url::Url::parse(raw).map_err(|e| invalid(format!("{field} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "{field} must use http or https, not {:?}",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(invalid(format!("{field} must name a host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in a URL end up in logs and listings; headers do not.
        return Err(invalid(format!(
            "{field} must not carry credentials; pass them as a header (e.g. authorization)"
        )));
    }
    Ok(url)
}

fn http_headers(
    field: &str,
    headers: HashMap<String, String>,
) -> Result<BTreeMap<String, String>, ManagerError> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid(format!(
            "{field} has {} entries; at most {MAX_HEADERS} are allowed",
            headers.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::try_from(lower.as_str()).is_err() {
            return Err(invalid(format!(
                "{field}: {name:?} is not a valid header name"
            )));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(invalid(format!(
                "{field}: {name:?} is set by the MCP transport itself and cannot be overridden"
            )));
        }
        if value.len() > MAX_HEADER_VALUE || http::HeaderValue::try_from(value.as_str()).is_err() {
            return Err(invalid(format!(
                "{field}: the value of {name:?} must be at most {MAX_HEADER_VALUE} bytes of visible ASCII"
            )));
        }
        out.insert(lower, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(server_name("weather-2.prod_eu").is_ok());
        for bad in [
            "",
            "-lead",
            "has space",
            "ünï",
            &"x".repeat(MAX_SERVER_NAME + 1),
        ] {
            assert!(server_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn urls() {
        let http = |url: &str| {
            transport(Some(TransportRequest::StreamableHttp {
                url: url.into(),
                headers: HashMap::new(),
                oauth: None,
            }))
        };
        assert!(http("http://127.0.0.1:8080/mcp").is_ok());
        for bad in [
            "",
            "ftp://x/",
            "not a url",
            "http://user:pw@host/",
            "file:///etc/passwd",
        ] {
            assert!(http(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn header_errors_never_echo_values() {
        let err = transport(Some(TransportRequest::Sse {
            url: "http://127.0.0.1/sse".into(),
            headers: HashMap::from([("authorization".into(), "secret\nvalue".into())]),
        }))
        .unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
