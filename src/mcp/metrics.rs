//! What the MCP client side measures: how long connecting, listing and
//! calling take per transport, the stdio children alive, teardowns that did
//! not go cleanly (each also logged at debug where it happens), and the
//! process groups a killed daemon left that start-up swept.

use std::sync::Arc;

use crate::{model::Transport, telemetry::metrics as exposition};

pub(super) struct McpMetrics {
    durations: exposition::HistogramVec,
    children: exposition::IntGauge,
    teardown_failures: exposition::IntCounter,
    children_killed: exposition::IntCounter,
    orphan_groups_swept: exposition::IntCounter,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Operation {
    Connect,
    ListTools,
    CallTool,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::ListTools => "list_tools",
            Operation::CallTool => "call_tool",
        }
    }
}

/// The transport label of a server.
pub(super) fn transport_label(spec: &Transport) -> &'static str {
    match spec {
        Transport::Stdio { .. } => "stdio",
        Transport::StreamableHttp { .. } => "streamable_http",
        Transport::Sse { .. } => "sse",
    }
}

impl McpMetrics {
    pub(super) fn new() -> Arc<McpMetrics> {
        // The names and labels are fixed and valid: these cannot fail.
        let durations = exposition::HistogramVec::new(
            exposition::HistogramOpts::new(
                "mcpd_mcp_operation_duration_seconds",
                "Time MCP servers took: connect (transport and initialize or server/discover), list_tools (every page), call_tool (until the result, input rounds included), failures included.",
            )
            .buckets(exposition::latency_buckets()),
            &["operation", "transport"],
        )
        .expect("valid histogram");
        let children = exposition::IntGauge::new(
            "mcpd_mcp_child_processes",
            "Stdio MCP server processes the daemon holds (started, not yet reaped or killed).",
        )
        .expect("valid gauge");
        let teardown_failures = exposition::IntCounter::new(
            "mcpd_mcp_teardown_failures_total",
            "Sessions or processes whose teardown did not go cleanly (timed out, failed, or a process that survived SIGKILL); never an RPC's failure.",
        )
        .expect("valid counter");
        let children_killed = exposition::IntCounter::new(
            "mcpd_mcp_child_processes_killed_total",
            "Stdio MCP servers that did not exit within --teardown-grace of their session closing and were killed.",
        )
        .expect("valid counter");
        let orphan_groups_swept = exposition::IntCounter::new(
            "mcpd_mcp_orphan_groups_swept_total",
            "Process groups of stdio MCP servers that a daemon killed outright left running (its records in --run-dir), killed at start-up.",
        )
        .expect("valid counter");
        Arc::new(McpMetrics {
            durations,
            children,
            teardown_failures,
            children_killed,
            orphan_groups_swept,
        })
    }

    pub(super) fn register(&self, registry: &exposition::Registry) {
        exposition::register(registry, self.durations.clone());
        exposition::register(registry, self.children.clone());
        exposition::register(registry, self.teardown_failures.clone());
        exposition::register(registry, self.children_killed.clone());
        exposition::register(registry, self.orphan_groups_swept.clone());
    }

    /// Times an operation until the returned timer drops, on every path out.
    pub(super) fn time(
        &self,
        operation: Operation,
        transport: &'static str,
    ) -> exposition::HistogramTimer {
        self.durations
            .with_label_values(&[operation.label(), transport])
            .start_timer()
    }

    pub(super) fn child_started(&self) {
        self.children.inc();
    }

    pub(super) fn child_reaped(&self) {
        self.children.dec();
    }

    pub(super) fn child_killed(&self) {
        self.children_killed.inc();
    }

    pub(super) fn groups_swept(&self, groups: usize) {
        self.orphan_groups_swept.inc_by(groups as u64);
    }

    pub(super) fn teardown_failed(&self) {
        self.teardown_failures.inc();
    }
}
