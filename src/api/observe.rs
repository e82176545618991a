//! Every gRPC call the daemon answers, observed from outside the services:
//! the RPC metrics (count and latency by method and code) for all of them,
//! and one log line per `mcpd.v1` call (method, organization, code,
//! duration; never the request's contents, never the key).
//!
//! Each `mcpd.v1` call is also a span, `rpc` (the trace's server span, a
//! child of the caller's when the request carries a W3C `traceparent`):
//! the handler runs in it, so the MCP and database spans of the call are
//! its children; it ends with the call's status, a stream's included.
//!
//! The outcome is read from the response as the client gets it: the status
//! in the headers of a trailers-only answer, else in the trailers at the end
//! of the body, so a stream is counted when it ends. A body dropped before
//! its trailers (the caller went away) counts as CANCELLED.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tonic::{Code, Status};
use tracing::{Instrument, Span, field::Empty};

use crate::telemetry::metrics::{self as exposition, HistogramOpts, HistogramVec, Opts, Registry};

/// The organization the authentication layer found; read when the call ends.
#[derive(Clone, Default)]
pub(super) struct CallerSlot(Arc<OnceLock<String>>);

impl CallerSlot {
    pub(super) fn set(&self, organization: &str) {
        let _ = self.0.set(organization.to_owned());
    }
}

/// The methods the daemon serves, by path. Anything else is labelled
/// `unknown`: a caller must not be able to mint label values (and series)
/// by sending made-up paths.
struct Methods(HashMap<String, (Arc<str>, Arc<str>)>);

impl Methods {
    fn from_descriptor_sets(sets: &[&[u8]]) -> Methods {
        let mut methods = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    let full: Arc<str> = format!("{}.{}", file.package(), service.name()).into();
                    for method in &service.method {
                        methods.insert(
                            format!("/{full}/{}", method.name()),
                            (full.clone(), Arc::from(method.name())),
                        );
                    }
                }
            }
        }
        Methods(methods)
    }
}

#[derive(Clone)]
pub(super) struct ObserveLayer {
    inner: Arc<Observer>,
}

struct Observer {
    methods: Methods,
    calls: exposition::IntCounterVec,
    durations: HistogramVec,
}

impl ObserveLayer {
    /// Observes the methods described by `descriptor_sets`; registers its
    /// metrics in `registry`.
    pub(super) fn new(registry: &Registry, descriptor_sets: &[&[u8]]) -> ObserveLayer {
        // The names and labels are fixed and valid: these cannot fail.
        let calls = exposition::IntCounterVec::new(
            Opts::new(
                "mcpd_grpc_server_handled_total",
                "gRPC calls answered, by service, method and status code (streams when they end).",
            ),
            &["service", "method", "code"],
        )
        .expect("valid counter");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "mcpd_grpc_server_handling_seconds",
                "Time from a call's arrival to its status (a stream's whole life), by service, method and status code.",
            )
            .buckets(exposition::latency_buckets()),
            &["service", "method", "code"],
        )
        .expect("valid histogram");
        exposition::register(registry, calls.clone());
        exposition::register(registry, durations.clone());
        ObserveLayer {
            inner: Arc::new(Observer {
                methods: Methods::from_descriptor_sets(descriptor_sets),
                calls,
                durations,
            }),
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            observer: self.inner.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Observe<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let mut call = Call::start(self.observer.clone(), request.uri().path());
        crate::telemetry::traces::set_remote_parent(&call.span, request.headers());
        request.extensions_mut().insert(call.caller.clone());
        let span = call.span.clone();
        let response = span.in_scope(|| self.inner.call(request));
        let handled = async move {
            let (parts, body) = response.await?.into_parts();
            // Trailers-only: the answer is complete with its headers.
            if let Some(status) = Status::from_header_map(&parts.headers) {
                call.finish(&status);
            }
            Ok(http::Response::from_parts(
                parts,
                ObservedBody {
                    inner: body,
                    call: Some(call),
                },
            ))
        };
        Box::pin(handled.instrument(span))
    }
}

/// A call until its status is known.
struct Call {
    observer: Arc<Observer>,
    started: Instant,
    /// The path, when it is not a method we serve (logged, never a label).
    path: String,
    method: Option<(Arc<str>, Arc<str>)>,
    caller: CallerSlot,
    /// Disabled for calls that are not logged (health, reflection), and
    /// when no trace layer is installed.
    span: Span,
    finished: bool,
}

impl Call {
    fn start(observer: Arc<Observer>, path: &str) -> Call {
        let method = observer.methods.0.get(path).cloned();
        let span = match &method {
            Some((service, method)) if service.starts_with("mcpd.") => rpc_span(service, method),
            // A made-up path is named by its package only: the caller
            // chose the rest.
            None if path.starts_with("/mcpd.") => rpc_span("unknown", "unknown"),
            _ => Span::none(),
        };
        Call {
            observer,
            started: Instant::now(),
            path: path.to_owned(),
            method,
            caller: CallerSlot::default(),
            span,
            finished: false,
        }
    }

    fn finish(&mut self, status: &Status) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let code = code_name(status.code());
        let (service, method) = match &self.method {
            Some((service, method)) => (&**service, &**method),
            None => ("unknown", "unknown"),
        };
        self.observer
            .calls
            .with_label_values(&[service, method, code])
            .inc();
        self.observer
            .durations
            .with_label_values(&[service, method, code])
            .observe(elapsed.as_secs_f64());
        // The registry's own calls, and made-up paths under its package.
        let logged = match &self.method {
            Some((service, _)) => service.starts_with("mcpd."),
            None => self.path.starts_with("/mcpd."),
        };
        if !logged {
            return;
        }
        // Ends the span (with the handler's future, its last other holder).
        let span = std::mem::replace(&mut self.span, Span::none());
        span.record("rpc.grpc.status_code", status.code() as i32);
        if let Some(org) = self.caller.0.get() {
            span.record("mcpd.organization", org.as_str());
        }
        // The code's name, not the message: a message may quote the
        // caller's input (a tool argument that did not fit its schema).
        if server_fault(status.code()) {
            span.record("otel.status_description", code);
        }
        let rpc = match &self.method {
            Some((_, method)) => method.to_string(),
            None => crate::telemetry::escape_control(&self.path),
        };
        let org = self.caller.0.get().map_or("-", String::as_str);
        // Microseconds, shown as milliseconds with three decimals at most.
        let duration_ms = elapsed.as_micros().min(u128::from(u64::MAX)) as f64 / 1000.0;
        // Our identifiers bare; values from outside (the organization, an
        // error message) as strings, which the text format quotes and
        // escapes, so no caller can forge a line.
        if status.code() == Code::Ok {
            tracing::info!(rpc = %rpc, org, code = %code, duration_ms, "rpc");
        } else {
            tracing::info!(
                rpc = %rpc,
                org,
                code = %code,
                duration_ms,
                error = status.message(),
                "rpc"
            );
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(&Status::cancelled("the caller went away"));
        }
    }
}

/// The response body, passed through; its trailers finish the call.
pub(super) struct ObservedBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Body for ObservedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut call) = self.call.take()
                {
                    let status = Status::from_header_map(trailers)
                        .unwrap_or_else(|| Status::unknown("the answer ended without a status"));
                    call.finish(&status);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut call) = self.call.take() {
                    call.finish(&Status::internal("the answer's body failed"));
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = self.call.take() {
                    // Trailers-only answers were finished with their headers.
                    call.finish(&Status::unknown("the answer ended without a status"));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The server span of one call, named `service/method` as the RPC semantic
/// conventions have it. Status and organization are filled in at the end.
fn rpc_span(service: &str, method: &str) -> Span {
    tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        mcpd.organization = Empty,
        otel.status_description = Empty,
    )
}

/// The canonical name of a gRPC code, as grpcurl and the spec spell it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether `code` says the server failed, which marks its span as an error
/// (OpenTelemetry's conventions for gRPC server spans). A caller's mistake
/// (NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED, ...) is the server doing its
/// job: the span's status stays unset, the code is in `rpc.grpc.status_code`.
fn server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::{Methods, server_fault};
    use tonic::Code;

    #[test]
    fn only_server_faults_are_span_errors() {
        for code in [Code::Unavailable, Code::Internal, Code::DeadlineExceeded] {
            assert!(server_fault(code), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
        ] {
            assert!(!server_fault(code), "{code:?}");
        }
    }

    #[test]
    fn methods_come_from_the_descriptors_and_nothing_else() {
        let methods = Methods::from_descriptor_sets(&[crate::proto::FILE_DESCRIPTOR_SET]);
        let (service, method) = methods
            .0
            .get("/mcpd.v1.McpServerService/CreateMcpServer")
            .expect("a served method");
        assert_eq!(
            (&**service, &**method),
            ("mcpd.v1.McpServerService", "CreateMcpServer")
        );
        assert!(methods.0.contains_key("/mcpd.v1.AdminService/GetStats"));
        assert!(!methods.0.contains_key("/mcpd.v1.McpServerService/MadeUp"));
    }
}
