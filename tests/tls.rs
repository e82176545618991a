//! TLS and mutual TLS on the gRPC listener: an in-process daemon with
//! certificates made here (rcgen), tonic clients that trust them or not, and
//! the binary's start-up checks of the flags and files. SQLite only: the
//! transport does not depend on the backend.

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use mcpd::{
    api::{PemFile, TlsError, TlsSettings},
    proto,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::{
    Code, Status,
    transport::{Certificate, ClientTlsConfig, Identity},
};

/// A certificate authority that lives for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        Leaf {
            cert: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self) -> Leaf {
        self.issue(&["agent"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn certificate(&self) -> Certificate {
        Certificate::from_pem(&self.pem)
    }
}

impl Leaf {
    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }
}

fn pem(path: &str, pem: &str) -> PemFile {
    PemFile {
        path: PathBuf::from(path),
        pem: pem.as_bytes().to_vec(),
    }
}

fn settings(server: &Leaf, client_ca: Option<&Ca>) -> TlsSettings {
    TlsSettings {
        cert: pem("server.pem", &server.cert),
        key: pem("server.key", &server.key),
        client_ca: client_ca.map(|ca| pem("client-ca.pem", &ca.pem)),
    }
}

/// A client that trusts `ca` and checks the name `localhost`.
fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(ca.certificate())
        .domain_name("localhost")
}

async fn start(server: &Leaf, client_ca: Option<&Ca>, client: ClientTlsConfig) -> Daemon {
    Daemon::start_with(
        Backend::Sqlite,
        DaemonOptions {
            tls: Some(DaemonTls {
                server: settings(server, client_ca),
                client,
            }),
            ..DaemonOptions::default()
        },
    )
    .await
}

/// How a call on a connection of its own failed.
#[derive(Debug)]
enum Failure {
    /// Connecting (the TLS handshake, as the client sees it) failed.
    Connect(tonic::transport::Error),
    /// The call failed: by the connection, or by the service.
    Call(Status),
}

/// ListMcpServers on a connection of its own.
async fn list_over(
    daemon: &Daemon,
    tls: Option<ClientTlsConfig>,
    key: Option<&str>,
) -> Result<proto::ListMcpServersResponse, Failure> {
    let channel = try_connect(daemon.addr, tls)
        .await
        .map_err(Failure::Connect)?;
    let mut client = proto::mcp_server_service_client::McpServerServiceClient::new(channel);
    let request = proto::ListMcpServersRequest::default();
    let request = match key {
        Some(key) => with_key(key, request),
        None => tonic::Request::new(request),
    };
    tokio::time::timeout(Duration::from_secs(30), client.list_mcp_servers(request))
        .await
        .expect("an answer or an error within 30 s")
        .map(tonic::Response::into_inner)
        .map_err(Failure::Call)
}

/// Refused by the connection, for one of `reasons` (words of rustls'
/// error; any when empty): neither an answer nor a status from the service
/// (UNAUTHENTICATED would mean the call got through TLS).
fn assert_refused(
    result: Result<proto::ListMcpServersResponse, Failure>,
    reasons: &[&str],
    what: &str,
) {
    let failure = match result {
        Ok(answer) => panic!("{what}: expected a refusal, got {answer:?}"),
        Err(failure) => failure,
    };
    if let Failure::Call(status) = &failure {
        let by_transport = std::error::Error::source(status)
            .is_some_and(|source| source.is::<tonic::transport::Error>());
        assert!(by_transport, "{what}: refused by the service: {status:?}");
    }
    let failure_text = match &failure {
        Failure::Connect(err) => format!("connecting: {err:?}"),
        Failure::Call(status) => format!("calling: {status:?}"),
    };
    assert!(
        reasons.is_empty() || reasons.iter().any(|reason| failure_text.contains(reason)),
        "{what}: expected one of {reasons:?} in {failure_text}"
    );
}

/// The status of a call that reached the service.
fn status(result: Result<proto::ListMcpServersResponse, Failure>) -> Status {
    match result {
        Err(Failure::Call(status)) => status,
        other => panic!("expected a status from the service, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_the_registry_over_tls() {
    let ca = Ca::new("mcpd test CA");
    let daemon = start(&ca.server(), None, trusting(&ca)).await;
    let acme = daemon.org("acme").await;

    let created = acme
        .create("weather", stdio(["--tools", "3"]))
        .await
        .expect("create over TLS");
    let server = created.server.expect("server");
    assert_eq!(server.tool_count, 3);
    let mut names: Vec<_> = created.tools.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["tool_0000", "tool_0001", "tool_0002"]);
    let listed = acme.servers().await.expect("list over TLS");
    assert_eq!(listed, vec![server.clone()]);
    assert_eq!(acme.tools(&server.id).await.unwrap().len(), 3);

    // The API key is still required on top of TLS.
    let status = status(list_over(&daemon, Some(trusting(&ca)), None).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_client_is_refused_by_the_tls_port() {
    let ca = Ca::new("mcpd test CA");
    let daemon = start(&ca.server(), None, trusting(&ca)).await;
    let key = daemon.keys.key("acme").to_owned();

    assert_refused(
        list_over(&daemon, None, Some(&key)).await,
        // The server's alert read as an HTTP/2 frame, or a reset: it depends
        // on who is faster.
        &[],
        "plaintext h2 to the TLS port",
    );
    // Control: the same call over TLS is answered.
    let listed = list_over(&daemon, Some(trusting(&ca)), Some(&key)).await;
    assert_eq!(listed.expect("over TLS").servers, vec![]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_that_does_not_trust_the_server_is_refused() {
    let ca = Ca::new("mcpd test CA");
    let stranger = Ca::new("some other CA");
    let daemon = start(&ca.server(), None, trusting(&ca)).await;
    let key = daemon.keys.key("acme").to_owned();

    assert_refused(
        list_over(&daemon, Some(trusting(&stranger)), Some(&key)).await,
        &["UnknownIssuer"],
        "a client trusting another CA",
    );
    // The right CA but another name than the certificate's.
    let wrong_name = ClientTlsConfig::new()
        .ca_certificate(ca.certificate())
        .domain_name("mcpd.example.com");
    assert_refused(
        list_over(&daemon, Some(wrong_name), Some(&key)).await,
        &["NotValidForName"],
        "a client expecting another name",
    );
    assert!(
        list_over(&daemon, Some(trusting(&ca)), Some(&key))
            .await
            .is_ok()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let ca = Ca::new("mcpd test CA");
    let clients = Ca::new("mcpd clients CA");
    let stranger = Ca::new("some other CA");
    let agent = clients.client();
    let daemon = start(
        &ca.server(),
        Some(&clients),
        trusting(&ca).identity(agent.identity()),
    )
    .await;
    let key = daemon.keys.key("acme").to_owned();

    // The harness's client presents `agent`: a whole create and list.
    let acme = daemon.org("acme").await;
    let created = acme
        .create("weather", stdio(["--tools", "3"]))
        .await
        .expect("create under mutual TLS");
    let server = created.server.expect("server");
    assert_eq!(server.tool_count, 3);
    assert_eq!(acme.servers().await.unwrap(), vec![server]);

    // A client certificate is refused after the client has sent its last
    // handshake message (TLS 1.3): it sees the server's alert, or, when the
    // close overtakes it, a closed connection or a broken pipe. Any failure
    // of the connection will do; the same call with a good certificate is
    // answered below.
    assert_refused(
        list_over(&daemon, Some(trusting(&ca)), Some(&key)).await,
        &[],
        "no client certificate",
    );
    assert_refused(
        list_over(
            &daemon,
            Some(trusting(&ca).identity(stranger.client().identity())),
            Some(&key),
        )
        .await,
        &[],
        "a client certificate from another CA",
    );
    // A certificate from the server's CA is not one from the client CA.
    assert_refused(
        list_over(
            &daemon,
            Some(trusting(&ca).identity(ca.client().identity())),
            Some(&key),
        )
        .await,
        &[],
        "a client certificate from the server's CA",
    );
    let another_agent = Some(trusting(&ca).identity(clients.client().identity()));
    let listed = list_over(&daemon, another_agent.clone(), Some(&key)).await;
    assert_eq!(
        listed
            .expect("a certificate from the client CA")
            .servers
            .len(),
        1
    );
    // The certificate does not stand in for the API key.
    let status = status(list_over(&daemon, another_agent, None).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    daemon.stop().await;
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    let ca = Ca::new("mcpd test CA");
    let server = ca.server();
    let other = ca.server();
    assert!(settings(&server, Some(&ca)).check().is_ok());

    let mut garbled = settings(&server, None);
    garbled.cert = pem("garbled.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");
    let err = garbled.check().unwrap_err();
    assert!(matches!(err, TlsError::NotPem { .. }), "{err:?}");
    assert!(err.to_string().contains("garbled.pem"), "{err}");

    let mut key_as_cert = settings(&server, None);
    key_as_cert.cert = pem("key-as-cert.pem", &server.key);
    let err = key_as_cert.check().unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("key-as-cert.pem"), "{err}");

    let mut cert_as_key = settings(&server, None);
    cert_as_key.key = pem("cert-as-key.pem", &server.cert);
    let err = cert_as_key.check().unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(err.to_string().contains("cert-as-key.pem"), "{err}");

    let mut mismatched = settings(&server, None);
    mismatched.key = pem("other.key", &other.key);
    let err = mismatched.check().unwrap_err();
    assert!(matches!(err, TlsError::Identity { .. }), "{err:?}");
    assert!(
        err.to_string().contains("server.pem") && err.to_string().contains("other.key"),
        "{err}"
    );

    let mut empty_ca = settings(&server, Some(&ca));
    empty_ca.client_ca = Some(pem("empty-ca.pem", ""));
    let err = empty_ca.check().unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("empty-ca.pem"), "{err}");
}

/// `mcpd serve ARGS` in `dir`: its exit status and stderr. It must exit on
/// its own, before serving.
async fn serve_fails(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let db = format!("sqlite://{}", dir.join("mcpd.db").display());
    let key = dir.join("mcpd.key");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcpd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--database-url", &db, "--secret-key-file"])
        .arg(&key)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .unwrap_or_else(|_| panic!("mcpd serve {args:?} did not exit within 30 s"))
        .unwrap();
    let code = output.status.code().expect("an exit code");
    assert_ne!(code, 0, "mcpd serve {args:?} succeeded");
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn the_binary_refuses_incomplete_flags_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mcpd test CA");
    let server = ca.server();
    let write = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_string_lossy().into_owned()
    };
    let cert = write("server.pem", &server.cert);
    let key = write("server.key", &server.key);
    let ca_pem = write("ca.pem", &ca.pem);
    let garbage = write("garbage.key", "not a key\n");
    let missing = dir
        .path()
        .join("missing.pem")
        .to_string_lossy()
        .into_owned();

    let (code, stderr) = serve_fails(dir.path(), &["--tls-cert", &cert]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");

    let (_, stderr) = serve_fails(dir.path(), &["--tls-key", &key]).await;
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    let (_, stderr) = serve_fails(dir.path(), &["--tls-client-ca", &ca_pem]).await;
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    let (_, stderr) = serve_fails(dir.path(), &["--tls-cert", &missing, "--tls-key", &key]).await;
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    let (_, stderr) = serve_fails(dir.path(), &["--tls-cert", &cert, "--tls-key", &garbage]).await;
    assert!(stderr.contains(&garbage), "{stderr}");
    assert!(stderr.contains("no PEM private key"), "{stderr}");
    // Refused before the database was opened.
    assert!(!dir.path().join("mcpd.db").exists());
}
