//! JSON export: the serde form of [`Report`], pretty-printed, with a trailing newline. The field
//! names and types are a contract; see [`crate::report`].

use std::io::Write;

use crate::report::Report;

/// Writes `report` as pretty-printed JSON followed by a newline.
pub fn write<W: Write>(report: &Report, mut out: W) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut out, report)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::super::{Format, tests::render, tests::sample_report};

    /// The JSON type of a contract field.
    #[derive(Clone, Copy, Debug)]
    enum Kind {
        U64,
        U32,
        F64,
        Str,
        Bool,
        Hex,
        Object,
        Array,
    }

    fn is(kind: Kind, value: &Value) -> bool {
        match kind {
            Kind::U64 => value.is_u64(),
            Kind::U32 => value.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
            Kind::F64 => value.is_number(),
            Kind::Str => value.is_string(),
            Kind::Bool => value.is_boolean(),
            Kind::Hex => value
                .as_str()
                .and_then(|s| s.strip_prefix("0x"))
                .is_some_and(|h| u64::from_str_radix(h, 16).is_ok()),
            Kind::Object => value.is_object(),
            Kind::Array => value.is_array(),
        }
    }

    /// Asserts `object` has exactly the `fields`, each of its kind, or null where `nullable`.
    fn assert_fields(
        what: &str,
        object: &Value,
        fields: &[(&str, Kind, bool)],
    ) -> Map<String, Value> {
        let map = object
            .as_object()
            .unwrap_or_else(|| panic!("{what} is not an object"))
            .clone();
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = fields.iter().map(|(name, _, _)| *name).collect();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want, "{what}: field names");
        for &(name, kind, nullable) in fields {
            let value = &map[name];
            assert!(
                is(kind, value) || (nullable && value.is_null()),
                "{what}.{name} = {value} is not {kind:?}{}",
                if nullable { " or null" } else { "" }
            );
        }
        map
    }

    #[test]
    fn json_output_follows_the_contract() {
        // Given the sample report as JSON
        let text = render(&sample_report(), Format::Json);
        assert!(text.ends_with("}\n"), "trailing newline");

        // When parsing it back
        let value: Value = serde_json::from_str(&text).expect("valid JSON");

        // Then every contract field is there with its type
        use Kind::*;
        let top = assert_fields(
            "report",
            &value,
            &[
                ("pid", U32, false),
                ("command", Str, false),
                ("duration_s", F64, false),
                ("unwind", Str, false),
                ("ended", Str, false),
                ("totals", Object, false),
                ("diagnostics", Object, false),
                ("group_by", Str, false),
                ("omitted", Object, false),
                ("coverage", Object, false),
                ("stacks", Array, false),
            ],
        );
        let omitted = assert_fields(
            "omitted",
            &top["omitted"],
            &[
                ("rows", U64, false),
                ("live_bytes", U64, false),
                ("live_allocs", U64, false),
                ("total_allocs", U64, false),
                ("total_bytes", U64, false),
            ],
        );
        assert_eq!(
            (omitted["rows"].as_u64(), omitted["live_bytes"].as_u64()),
            (Some(2), Some(2048))
        );
        assert_eq!(top["group_by"], "source");
        let coverage = assert_fields(
            "coverage",
            &top["coverage"],
            &[
                ("anon_at_attach_bytes", U64, false),
                ("anon_bytes", U64, false),
                ("anon_growth_bytes", U64, false),
                ("traced_live_bytes", U64, false),
                ("not_traced", Array, false),
                ("warning", Str, true),
            ],
        );
        assert!(coverage["warning"].is_string());
        let totals = assert_fields(
            "totals",
            &top["totals"],
            &[
                ("allocs", U64, false),
                ("frees", U64, false),
                ("live_bytes", U64, false),
                ("live_allocs", U64, false),
                ("unmatched_frees", U64, false),
                ("lost_events", U64, false),
                ("mapped_bytes", U64, false),
                ("mapped_regions", U64, false),
            ],
        );
        assert_eq!(totals["lost_events"], 7);
        let diagnostics: Vec<(&str, Kind, bool)> = [
            "ringbuf_full",
            "stack_failed",
            "stack_map_full",
            "stacks_truncated",
            "pending_full",
            "pending_clobbered",
            "pending_missing",
            "nested_calls",
            "replaced_live",
            "dropped_over_limit",
            "late_events",
            "released_by_exec",
            "history_rows",
            "history_rows_dropped",
            "modules_retired_dropped",
            "unwind_no_mapping",
            "unwind_unsupported",
            "unwind_read_failed",
            "unwind_no_progress",
            "sample_map_full",
            "unsampled",
            "undecodable_events",
            "unwind_table_bytes",
            "unwind_files_unreadable",
            "unwind_tables_not_loaded",
            "unwind_verified",
            "unwind_mismatched",
            "tracer_memory_bytes",
            "events_sent",
        ]
        .into_iter()
        .map(|name| (name, U64, false))
        .collect();
        assert_fields("diagnostics", &top["diagnostics"], &diagnostics);

        let stacks = top["stacks"].as_array().expect("stacks is an array");
        assert_eq!(stacks.len(), 3);
        let mut saw_null_age = false;
        let mut saw_null_function = false;
        for (i, stack) in stacks.iter().enumerate() {
            let stack = assert_fields(
                &format!("stacks[{i}]"),
                stack,
                &[
                    ("allocator", Str, false),
                    ("live_bytes", U64, false),
                    ("live_allocs", U64, false),
                    ("total_allocs", U64, false),
                    ("total_bytes", U64, false),
                    ("oldest_age_s", F64, true),
                    ("pid", U32, false),
                    ("truncated", Bool, false),
                    ("incomplete", Bool, false),
                    ("verdict", Str, false),
                    ("growth_bytes_per_s", F64, true),
                    ("growth_bytes_per_h", F64, true),
                    ("growth_r2", F64, true),
                    ("ages", Object, false),
                    ("frames", Array, false),
                    ("call_sites", Array, false),
                ],
            );
            saw_null_age |= stack["oldest_age_s"].is_null();
            let frames = stack["frames"].as_array().map_or(0, Vec::len);
            for (j, site) in stack["call_sites"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let site = assert_fields(
                    &format!("stacks[{i}].call_sites[{j}]"),
                    site,
                    &[
                        ("live_bytes", U64, false),
                        ("live_allocs", U64, false),
                        ("total_allocs", U64, false),
                        ("total_bytes", U64, false),
                        ("addrs", Array, false),
                    ],
                );
                let addrs = site["addrs"].as_array().expect("addrs is an array");
                assert_eq!(addrs.len(), frames, "one address per frame");
                assert!(addrs.iter().all(|a| is(Hex, a)), "{addrs:?}");
            }
            for (j, frame) in stack["frames"].as_array().into_iter().flatten().enumerate() {
                let frame = assert_fields(
                    &format!("stacks[{i}].frames[{j}]"),
                    frame,
                    &[
                        ("function", Str, true),
                        ("module", Str, true),
                        ("file", Str, true),
                        ("line", U32, true),
                        ("addr", Hex, false),
                        ("offset", Hex, true),
                        ("build_id", Str, true),
                        ("inlined", Bool, false),
                    ],
                );
                saw_null_function |= frame["function"].is_null();
            }
        }
        assert!(
            saw_null_age && saw_null_function,
            "the sample covers null values"
        );

        // And the values are the report's, in report order
        assert_eq!(top["pid"], 4242);
        assert_eq!(top["duration_s"], 12.75);
        assert_eq!(stacks[0]["live_bytes"], 1_572_864);
        assert_eq!(stacks[0]["frames"][0]["addr"], "0x55d0c0de1234");
        assert_eq!(stacks[0]["frames"][0]["inlined"], true);
        assert_eq!(stacks[0]["call_sites"].as_array().map(Vec::len), Some(2));
        assert_eq!(stacks[0]["call_sites"][1]["addrs"][2], "0x55d0c0de2391");
        assert_eq!(stacks[1]["frames"][0]["offset"], "0x1234");
        assert_eq!(
            stacks[1]["frames"][0]["build_id"],
            "4c6561b1e2f0a9d87c3b5e1f"
        );
    }
}
