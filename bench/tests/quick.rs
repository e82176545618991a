//! The benchmark is not a test; this only checks that `--quick` runs end to
//! end and writes the JSON the README documents. It drives the debug
//! binaries the test command built, so its figures mean nothing (the
//! tool-call targets are printed, not asserted; what must hold whatever the
//! speed, such as no errors and no connection held during MCP I/O, is).

use std::{path::PathBuf, process::Command};

use serde_json::Value;

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mcpd-bench"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

#[test]
fn quick_run_writes_the_documented_json() {
    let dir = target_dir();
    for bin in ["mcpd", "mcp-test-server"] {
        assert!(
            dir.join(bin).exists(),
            "{bin} is missing: `cargo build --workspace` first"
        );
    }
    let out = tempfile::tempdir().unwrap();
    let json_path = out.path().join("results.json");
    let output = Command::new(env!("CARGO_BIN_EXE_mcpd-bench"))
        .arg("--quick")
        .arg("--daemon")
        .arg(dir.join("mcpd"))
        .arg("--test-server")
        .arg(dir.join("mcp-test-server"))
        .arg("--out")
        .arg(&json_path)
        // Debug binaries on a busy CI machine: give the pool more patience
        // than the real benchmark does, so only real errors count.
        .args(["--pool-timeout", "30s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Single create (daemon) vs floor"),
        "{stdout}"
    );

    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(report["mode"], "quick");
    let results = report["results"].as_array().unwrap();
    let baseline = report["fanout_baseline"].as_array().unwrap();
    for backend in ["postgres", "sqlite"] {
        let of = |scenario: &str| -> Vec<&Value> {
            results
                .iter()
                .filter(|r| r["backend"] == backend && r["scenario"] == scenario)
                .collect()
        };
        let singles = of("single_create");
        let sizes: Vec<u64> = singles.iter().map(|r| r["n"].as_u64().unwrap()).collect();
        assert_eq!(sizes, [1, 50, 500, 5000], "{backend}");
        for r in &singles {
            for key in [
                "p50_ms",
                "p99_ms",
                "persist_ms",
                "floor_ms",
                "floor_ratio",
                "hot_floor_ms",
                "hot_floor_ratio",
                "close_p50_ms",
                "close_vs_persist",
            ] {
                assert!(
                    r[key].as_f64().is_some_and(|v| v > 0.0),
                    "{backend} {key}: {r}"
                );
            }
            assert_eq!(r["errors"], 0, "{r}");
            assert_eq!(r["peak_connections_per_request"], 1, "{r}");
            assert_eq!(r["peak_connections"], 1, "{r}");
        }
        let load = of("load");
        assert_eq!(load.len(), 1);
        assert_eq!(load[0]["errors"], 0, "{}", load[0]);
        assert_eq!(load[0]["peak_connections_per_request"], 1);
        assert!(
            load[0]["peak_connections"].as_u64().unwrap() <= load[0]["pool_size"].as_u64().unwrap()
        );
        assert!(load[0]["throughput_per_s"].as_f64().unwrap() > 0.0);
        for key in ["cpu_ms_per_create", "cpu_ms_per_close"] {
            assert!(
                load[0][key].as_f64().is_some_and(|v| v > 0.0),
                "{backend} {key}: {}",
                load[0]
            );
        }
        let sync = of("sync_vs_recreate");
        assert_eq!(sync.len(), 1, "{backend}");
        let sync = sync[0];
        // The exact difference: the changed tools, the server row and the
        // event.
        assert_eq!(
            sync["sync_rows_written"],
            sync["changed"].as_u64().unwrap() + 2,
            "{sync}"
        );
        assert!(
            sync["rows_ratio"].as_f64().is_some_and(|x| x >= 10.0),
            "{sync}"
        );
        for key in [
            "sync_p50_ms",
            "recreate_p50_ms",
            "recreate_persist_p50_ms",
            "sync_floor_ms",
            "sync_floor_ratio",
            "sync_hot_floor_ms",
            "sync_hot_floor_ratio",
        ] {
            assert!(
                sync[key].as_f64().is_some_and(|v| v > 0.0),
                "{backend} {key}: {sync}"
            );
        }
        let watch = of("watch_latency");
        assert_eq!(watch.len(), 1, "{backend}");
        let daemons = if backend == "postgres" { 2 } else { 1 };
        assert_eq!(watch[0]["daemons"], daemons, "{}", watch[0]);
        for key in ["event_p50_ms", "event_p99_ms", "rpc_p50_ms"] {
            assert!(
                watch[0][key].as_f64().is_some_and(|v| v > 0.0),
                "{backend} {key}: {}",
                watch[0]
            );
        }
        let memory = of("memory");
        assert_eq!(memory.len(), 1);
        assert!(memory[0]["rss_mb"].as_f64().unwrap() > 0.0);
        assert_eq!(memory[0]["listed"], memory[0]["servers"]);

        let fanout: Vec<&Value> = baseline
            .iter()
            .filter(|r| r["backend"] == backend)
            .collect();
        assert!(
            fanout
                .iter()
                .any(|r| r["scenario"] == "fanout_single" && r["n"] == 50)
        );
        assert!(fanout.iter().any(|r| r["scenario"] == "fanout_load"));
        for r in fanout {
            assert!(r["peak_connections"].as_u64().is_some(), "{r}");
        }

        let calls: Vec<&Value> = report["call"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["backend"] == backend)
            .collect();
        for transport in ["stdio", "streamable_http"] {
            let of = |scenario: &str| -> &Value {
                let found: Vec<&&Value> = calls
                    .iter()
                    .filter(|r| r["transport"] == transport && r["scenario"] == scenario)
                    .collect();
                assert_eq!(found.len(), 1, "{backend} {transport} {scenario}");
                found[0]
            };
            let latency = of("call_latency");
            for key in [
                "direct_p50_ms",
                "direct_p99_ms",
                "mcpd_p50_ms",
                "mcpd_p99_ms",
                "mcpd_mcp_p50_ms",
                "connect_per_call_p50_ms",
                "mcpd_over_direct_p50",
                "connect_per_call_over_mcpd_p50",
            ] {
                assert!(
                    latency[key].as_f64().is_some_and(|v| v > 0.0),
                    "{backend} {transport} {key}: {latency}"
                );
            }
            assert_eq!(latency["errors"], 0, "{latency}");
            assert_eq!(latency["peak_connections_per_call"], 1, "{latency}");
            // The live session was open before the measured calls.
            assert_eq!(latency["session_opens"], 0, "{latency}");
            assert_eq!(latency["session_reuses"], latency["runs"], "{latency}");
            assert!(latency["targets"]["mcpd_over_direct_p50_met"].is_boolean());

            let concurrent = of("call_concurrent");
            assert_eq!(concurrent["callers"], 100, "{concurrent}");
            assert_eq!(concurrent["errors"], 0, "{concurrent}");
            assert_eq!(concurrent["direct_errors"], 0, "{concurrent}");
            assert_eq!(concurrent["peak_connections_per_call"], 1, "{concurrent}");
            assert!(concurrent["throughput_per_s"].as_f64().unwrap() > 0.0);
            assert!(
                concurrent["peak_connections"].as_u64().unwrap()
                    <= concurrent["pool_size"].as_u64().unwrap(),
                "{concurrent}"
            );
            assert_eq!(concurrent["live_sessions"], 1, "{concurrent}");
            assert_eq!(concurrent["session_opens"], 0, "{concurrent}");
            // Calls waiting on a stopped MCP server hold no connection.
            assert_eq!(
                concurrent["stalled_in_flight_seen"], concurrent["stalled_calls"],
                "{concurrent}"
            );
            assert_eq!(concurrent["stalled_checked_out_seen"], 0, "{concurrent}");
            assert_eq!(concurrent["stalled_errors"], 0, "{concurrent}");
            assert!(
                concurrent["stalled_mcp_min_ms"].as_f64().unwrap()
                    >= concurrent["stalled_ms"].as_f64().unwrap(),
                "{concurrent}"
            );
            assert_eq!(concurrent["targets"]["errors_met"], true, "{concurrent}");
            assert_eq!(
                concurrent["targets"]["held_during_io_met"], true,
                "{concurrent}"
            );

            let sessions = of("call_sessions");
            assert_eq!(sessions["errors"], 0, "{sessions}");
            assert_eq!(sessions["live_sessions"], sessions["servers"], "{sessions}");
            assert_eq!(sessions["session_opens"], sessions["servers"], "{sessions}");
            assert_eq!(sessions["live_sessions_after_close"], 0, "{sessions}");
            assert!(sessions["rss_live_mb"].as_f64().unwrap() > 0.0);
            if transport == "stdio" {
                assert_eq!(
                    sessions["stdio_children"], sessions["servers"],
                    "{sessions}"
                );
            }
        }
    }
    assert!(stdout.contains("Tool-call targets"), "{stdout}");

    // Replicas: PostgreSQL only, one daemon then three, the same workload.
    let replicas = report["replicas"].as_array().unwrap();
    let counts: Vec<u64> = replicas
        .iter()
        .map(|r| r["replicas"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 3], "{replicas:?}");
    for r in replicas {
        assert_eq!(r["backend"], "postgres", "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        let cpu = r["cpu_secs_per_replica"].as_array().unwrap();
        assert_eq!(cpu.len() as u64, r["replicas"].as_u64().unwrap(), "{r}");
        assert!(cpu.iter().all(|c| c.as_f64().unwrap() > 0.0), "{r}");
        for op in ["create", "call", "sync", "close"] {
            assert!(
                r[format!("{op}_per_s")].as_f64().unwrap() > 0.0,
                "{op}: {r}"
            );
        }
    }
    assert!(replicas[1]["call_vs_one"].as_f64().unwrap() > 0.0);
    assert!(stdout.contains("Replicas on one PostgreSQL"), "{stdout}");
}
