//! Stripped binaries named from their debug files, and libraries replaced at one address.
use super::*;

/// The row of `leak 25 1000`: 25 blocks of 1000 bytes, found by its figures alone.
fn leak_row(report: &Value) -> &Value {
    let rows: Vec<&Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| num(s, "live_bytes") == 25_000 && num(s, "live_allocs") == 25)
        .collect();
    assert_eq!(rows.len(), 1, "{report:#}");
    rows[0]
}

fn trace_leak(build: Build, extra: &[&str]) -> (Value, String) {
    let mut target = Fixture::start(&fixture(build));
    let tracer = Tracer::attach(target.pid, extra);
    target.cmd("leak 25 1000");
    let done = tracer.interrupt();
    assert!(done.status.success(), "{}", done.stderr);
    (done.report.unwrap(), done.stdout)
}

fn assert_named_with_lines(row: &Value) {
    let names = functions(row);
    assert!(
        has_subsequence(
            &names,
            &["alloc_buffer", "parse_header", "leak_request", "main"]
        ),
        "{names:?}"
    );
    let leaf = &row["frames"][0];
    assert!(
        leaf["file"].as_str().unwrap().ends_with("leaky.c"),
        "{leaf}"
    );
    assert!(leaf["line"].as_u64().is_some(), "{leaf}");
}

#[test]
fn a_stripped_binary_is_named_from_its_build_id_debug_file() {
    require_root();
    let binary = fixture(Build::CStrippedBuildId);
    let id = build_id(&binary);

    // Without its debug files: the frames keep module, build id and file offset
    let (report, stdout) = trace_leak(Build::CStrippedBuildId, &[]);
    let row = leak_row(&report);
    for frame in row["frames"].as_array().unwrap().iter().take(3) {
        assert!(frame["function"].is_null(), "{frame}");
        assert!(frame["file"].is_null(), "{frame}");
        assert_eq!(frame["module"], "leaky");
        assert_eq!(frame["build_id"], id.as_str());
        assert!(
            frame["offset"].as_str().unwrap().starts_with("0x"),
            "{frame}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("  leaky: ") && l.ends_with(&format!("frames, build id {id}"))),
        "the text report names the build id to look for: {stdout}"
    );
    // Stacks through different unnamed addresses stay apart
    assert_eq!(row["call_sites"].as_array().unwrap().len(), 1);

    // With --debuginfo-dir: functions and file:line
    let dir = debug_dir(Build::CStrippedBuildId);
    let (report, _) = trace_leak(
        Build::CStrippedBuildId,
        &["--debuginfo-dir", dir.to_str().unwrap()],
    );
    assert_named_with_lines(leak_row(&report));
}

#[test]
fn a_debuglink_and_minidebuginfo_are_followed() {
    require_root();
    // The debug file beside the binary in .debug/, named by .gnu_debuglink: no flag needed
    let (report, _) = trace_leak(Build::CStrippedDebugLink, &[]);
    assert_named_with_lines(leak_row(&report));

    // MiniDebugInfo: names from the compressed symbol table, no lines
    let (report, _) = trace_leak(Build::CMiniDebugInfo, &[]);
    let row = leak_row(&report);
    let names = functions(row);
    assert!(
        has_subsequence(
            &names,
            &["alloc_buffer", "parse_header", "leak_request", "main"]
        ),
        "{names:?}"
    );
    assert!(row["frames"][0]["file"].is_null(), "{row:#}");
}

#[test]
fn a_missing_debuginfo_dir_is_refused() {
    require_root();
    let (status, _, stderr) = run_leaktrace(&["--debuginfo-dir", "/nonexistent/debug", "-p", "1"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--debuginfo-dir"), "{stderr}");
}

#[test]
fn a_library_unloaded_and_another_loaded_in_its_place_keep_their_own_names() {
    require_root();
    let alpha = fixture(Build::Plugin);
    let beta = fixture(Build::PluginBeta);
    let mut target = Fixture::start(&fixture(Build::COmitFramePointer));
    let tracer = Tracer::attach(target.pid, &[]);
    let loaded_alpha = target.cmd(&format!("dlopen {}", alpha.display()));
    tracer.wait_for_tables_of("libplugin.so", Duration::from_secs(5));
    target.cmd("plugin 3 64");
    // leaktrace names a stack from the library mapped when it read the stack's first event
    // (within ~10 ms of it): let it read these before the library goes.
    tracer.wait_for_next_status();
    target.cmd("dlclose");
    let loaded_beta = target.cmd(&format!("dlopen {}", beta.display()));
    tracer.wait_for_tables_of("libplugin_beta.so", Duration::from_secs(5));
    target.cmd("plugin 5 96");
    assert_eq!(
        loaded_alpha, loaded_beta,
        "the second library must be loaded where the first was"
    );
    let report = tracer.interrupt().report.unwrap();

    // The blocks the unloaded library left are named from it, the new ones from the new
    let alpha_row = stack_from(&report, "plugin_make");
    assert_eq!(
        (num(alpha_row, "live_bytes"), num(alpha_row, "live_allocs")),
        (192, 3)
    );
    assert_eq!(alpha_row["frames"][0]["module"], "libplugin.so");
    let beta_row = stack_from(&report, "beta_make");
    assert_eq!(
        (num(beta_row, "live_bytes"), num(beta_row, "live_allocs")),
        (480, 5)
    );
    assert_eq!(beta_row["frames"][0]["module"], "libplugin_beta.so");
    for row in [alpha_row, beta_row] {
        assert!(
            has_subsequence(
                &functions(row),
                &["plugin_alloc", "call_plugin", "run", "main"]
            ),
            "{row:#}"
        );
    }
}
