//! The table's rows, derived from a snapshot: its stacks filtered, grouped, compared with the
//! baseline and sorted. Pure functions; [`super::app::App`] keeps the result until the next
//! change.

use std::{cmp::Ordering, collections::HashMap, sync::Arc};

use super::format::stack_description;
use crate::{
    heap::{FastHash, history::Series},
    report::{Frame, Report, StackReport, analytics::Verdict},
    tui::snapshot::Snapshot,
};

/// Newest samples kept per row for its sparkline: more than any column is wide.
pub(crate) const SPARK_SAMPLES: usize = 256;

/// How stacks are gathered into rows (key `g`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// One row per stack (per process, when several are traced).
    #[default]
    Stack,
    /// One row per call path, the same path in every traced process merged.
    Path,
    /// One row per allocating function (the allocator's caller, `frames[0]`).
    Function,
    /// One row per module of the allocating function.
    Module,
}

impl Grouping {
    /// The next grouping in the `g` cycle.
    pub(crate) const fn next(self) -> Self {
        match self {
            Self::Stack => Self::Path,
            Self::Path => Self::Function,
            Self::Function => Self::Module,
            Self::Module => Self::Stack,
        }
    }

    /// What `count` rows are, for the table's title: `1 stack`, `3 modules`.
    pub(crate) fn count(self, count: usize) -> String {
        let noun = match (self, count) {
            (Self::Stack, 1) => "stack",
            (Self::Stack, _) => "stacks",
            (Self::Path, 1) => "call path (processes merged)",
            (Self::Path, _) => "call paths (processes merged)",
            (Self::Function, 1) => "allocating function",
            (Self::Function, _) => "allocating functions",
            (Self::Module, 1) => "module",
            (Self::Module, _) => "modules",
        };
        format!("{} {noun}", super::format::thousands(count))
    }
}

/// The table's order (key `s`); every order is descending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SortKey {
    /// Live bytes, or their change since the baseline when one is set.
    #[default]
    LiveBytes,
    /// Growth fitted over `--window` (unknown last).
    Growth,
    /// Live allocations, or their change since the baseline when one is set.
    Count,
    /// Age of the oldest live allocation (none last).
    Age,
    /// Verdict, most severe first ([`severity`]), then live bytes.
    Verdict,
}

impl SortKey {
    /// The next order in the `s` cycle.
    pub(crate) const fn next(self) -> Self {
        match self {
            Self::LiveBytes => Self::Growth,
            Self::Growth => Self::Count,
            Self::Count => Self::Age,
            Self::Age => Self::Verdict,
            Self::Verdict => Self::LiveBytes,
        }
    }
}

/// How alarming a verdict is: leak > growing > steady > churn > unknown.
pub(crate) const fn severity(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Leak => 4,
        Verdict::Growing => 3,
        Verdict::Steady => 2,
        Verdict::Churn => 1,
        Verdict::Unknown => 0,
    }
}

/// The more severe of two verdicts ([`severity`]).
pub(crate) const fn most_severe(a: Verdict, b: Verdict) -> Verdict {
    if severity(b) > severity(a) { b } else { a }
}

/// Live bytes and allocations per stack id at one moment (key `b`), to show changes since.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Baseline {
    /// When it was taken, in seconds since attach.
    pub(crate) at_s: f64,
    /// `(live bytes, live allocations)` per stack id.
    pub(crate) stacks: HashMap<u64, (u64, u64)>,
}

impl Baseline {
    /// The baseline of every stack in `report`.
    pub(crate) fn of(report: &Report) -> Self {
        Self {
            at_s: report.duration_s,
            stacks: report
                .stacks
                .iter()
                .map(|s| (s.id, (s.live_bytes, s.live_allocs)))
                .collect(),
        }
    }

    /// Change of `stack`'s live bytes and allocations since the baseline (a stack unknown then
    /// had nothing live).
    pub(crate) fn delta(&self, stack: &StackReport) -> (i128, i128) {
        let (bytes, count) = self.stacks.get(&stack.id).copied().unwrap_or((0, 0));
        (
            i128::from(stack.live_bytes) - i128::from(bytes),
            i128::from(stack.live_allocs) - i128::from(count),
        )
    }
}

/// What a row stands for; it keeps the selection on the same row when the rows change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RowKey {
    /// A stack, by id.
    Stack(u64),
    /// A call path in any process: its allocator and frame labels.
    Path(String, Vec<String>),
    /// An allocating function, by its label ([`Frame::label`]).
    Function(String),
    /// A module, by its path (`[unknown]` when the frame has none).
    Module(String),
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    /// What the row stands for.
    pub(crate) key: RowKey,
    /// Live bytes, summed over the members.
    pub(crate) live_bytes: u64,
    /// Live allocations, summed over the members.
    pub(crate) live_allocs: u64,
    /// Growth in bytes per second, summed over the members that have one.
    pub(crate) growth_per_s: Option<f64>,
    /// Age of the oldest live allocation of any member, in seconds.
    pub(crate) oldest_age_s: Option<f64>,
    /// The stack's verdict; for a group, its members' most severe ([`most_severe`]).
    pub(crate) verdict: Verdict,
    /// Live bytes over time (summed over the members, aligned on the newest sample), oldest
    /// first, at most [`SPARK_SAMPLES`].
    pub(crate) spark: Vec<u64>,
    /// Indexes of the member stacks in `report.stacks`, most live bytes first.
    pub(crate) members: Vec<usize>,
    /// Change of live bytes and allocations since the baseline, when one is set.
    pub(crate) delta: Option<(i128, i128)>,
}

/// Everything besides the snapshot that decides the rows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a> {
    /// Case-insensitive substring of a function or module name; empty keeps every stack.
    pub(crate) filter: &'a str,
    /// How stacks are gathered into rows.
    pub(crate) grouping: Grouping,
    /// The rows' order.
    pub(crate) sort: SortKey,
    /// The baseline to compare with.
    pub(crate) baseline: Option<&'a Baseline>,
}

/// Whether `haystack` contains `needle` (lowercase) ignoring case. ASCII needles, the common
/// case, are compared in place: a filter runs over every frame of every stack on each key.
fn contains_folded(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        true
    } else if needle.is_ascii() {
        let needle = needle.as_bytes();
        haystack
            .as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
    } else {
        haystack.to_lowercase().contains(needle)
    }
}

/// Indexes of the stacks of `report` that pass `filter`, in report order. Stacks share their
/// frames (`Arc`s from the symbolizer), so each distinct frame is judged once.
pub(crate) fn visible_stacks(report: &Report, filter: &str) -> Vec<usize> {
    let needle = filter.to_lowercase();
    if needle.is_empty() {
        return (0..report.stacks.len()).collect();
    }
    let mut judged: HashMap<u64, bool, FastHash> = HashMap::default();
    let mut frame_matches = |frame: &Arc<Frame>| {
        *judged.entry(frame_key(frame)).or_insert_with(|| {
            let contains = |name: Option<&str>| name.is_some_and(|n| contains_folded(n, &needle));
            contains(frame.function.as_deref()) || contains(frame.module_name())
        })
    };
    report
        .stacks
        .iter()
        .enumerate()
        .filter(|(_, stack)| stack.frames.iter().any(&mut frame_matches))
        .map(|(i, _)| i)
        .collect()
}

/// A shared frame's identity, for the caches above and below (valid while its snapshot is).
fn frame_key(frame: &Arc<Frame>) -> u64 {
    Arc::as_ptr(frame) as usize as u64
}

/// The group a stack belongs to under `grouping`.
pub(crate) fn group_key(stack: &StackReport, grouping: Grouping) -> RowKey {
    let first = stack.frames.first();
    match grouping {
        Grouping::Stack => RowKey::Stack(stack.id),
        Grouping::Path => RowKey::Path(
            stack.allocator.clone(),
            stack.frames.iter().map(|f| f.label()).collect(),
        ),
        Grouping::Function => {
            RowKey::Function(first.map_or_else(|| "[no stack]".to_owned(), |f| f.label()))
        }
        Grouping::Module => RowKey::Module(
            first
                .and_then(|f| f.module.clone())
                .unwrap_or_else(|| "[unknown]".to_owned()),
        ),
    }
}

/// The rows of `snapshot` under `view`.
pub(crate) fn build_rows(snapshot: &Snapshot, view: View<'_>) -> Vec<Row> {
    let report = &snapshot.report;
    let empty = Series::default();
    let series = |i: usize| snapshot.series.get(i).unwrap_or(&empty);
    let mut groups: Vec<Row> = Vec::new();
    let mut index_of: HashMap<RowKey, usize> = HashMap::new();
    // By allocating function or module, a stack's group follows from its first frame, which
    // stacks share: found once per distinct frame, not once per stack.
    let mut by_first_frame: HashMap<u64, usize, FastHash> = HashMap::default();
    let new_row = |key| Row {
        key,
        live_bytes: 0,
        live_allocs: 0,
        growth_per_s: None,
        oldest_age_s: None,
        verdict: Verdict::Unknown,
        spark: Vec::new(),
        members: Vec::new(),
        delta: view.baseline.map(|_| (0, 0)),
    };
    for i in visible_stacks(report, view.filter) {
        let Some(stack) = report.stacks.get(i) else {
            continue;
        };
        let first = stack
            .frames
            .first()
            .filter(|_| matches!(view.grouping, Grouping::Function | Grouping::Module))
            .map(frame_key);
        let slot = if view.grouping == Grouping::Stack {
            // Every stack is its own row.
            groups.push(new_row(RowKey::Stack(stack.id)));
            groups.len() - 1
        } else if let Some(&slot) = first.and_then(|f| by_first_frame.get(&f)) {
            slot
        } else {
            let key = group_key(stack, view.grouping);
            let slot = *index_of.entry(key.clone()).or_insert_with(|| {
                groups.push(new_row(key));
                groups.len() - 1
            });
            if let Some(first) = first {
                by_first_frame.insert(first, slot);
            }
            slot
        };
        let Some(row) = groups.get_mut(slot) else {
            continue;
        };
        let stack_series = series(i);
        row.live_bytes = row.live_bytes.saturating_add(stack.live_bytes);
        row.live_allocs = row.live_allocs.saturating_add(stack.live_allocs);
        // The growth the report fitted over --window, as in the detail pane and every export.
        row.growth_per_s = sum_known(row.growth_per_s, stack.growth_bytes_per_s);
        row.oldest_age_s = max_known(row.oldest_age_s, stack.oldest_age_s);
        row.verdict = most_severe(row.verdict, stack.verdict);
        add_aligned(&mut row.spark, &stack_series.last(SPARK_SAMPLES));
        if let (Some((bytes, count)), Some(baseline)) = (row.delta.as_mut(), view.baseline) {
            let (db, dc) = baseline.delta(stack);
            *bytes += db;
            *count += dc;
        }
        row.members.push(i);
    }
    for row in groups.iter_mut().filter(|row| row.members.len() > 1) {
        row.members.sort_unstable_by(|&a, &b| {
            let bytes = |i: usize| report.stacks.get(i).map_or(0, |s| s.live_bytes);
            bytes(b).cmp(&bytes(a)).then(a.cmp(&b))
        });
    }
    // The order is total (ties broken by key): an unstable sort gives the same rows.
    groups.sort_unstable_by(|a, b| compare_rows(a, b, view.sort));
    groups
}

/// The description column of a row (made for the rows on screen only).
pub(crate) fn describe(report: &Report, row: &Row) -> String {
    let stacks = match row.members.len() {
        1 => "1 stack".to_owned(),
        n => format!("{} stacks", super::format::thousands(n)),
    };
    match &row.key {
        RowKey::Stack(_) => row
            .members
            .first()
            .and_then(|&i| report.stacks.get(i))
            .map(|stack| {
                let sites = match stack.call_sites.len() {
                    0 | 1 => stack_description(stack),
                    // First, so a narrow column does not cut it off.
                    n => format!("[{n} sites] {}", stack_description(stack)),
                };
                if report.processes.is_empty() {
                    sites
                } else {
                    format!("[pid {}] {sites}", stack.pid)
                }
            })
            .unwrap_or_default(),
        RowKey::Path(_, _) => {
            let path = row
                .members
                .first()
                .and_then(|&i| report.stacks.get(i))
                .map(stack_description)
                .unwrap_or_default();
            let mut pids: Vec<u32> = row
                .members
                .iter()
                .filter_map(|&i| report.stacks.get(i).map(|s| s.pid))
                .collect();
            pids.sort_unstable();
            pids.dedup();
            match pids.len() {
                1 => path,
                n => format!("[{n} processes] {path}"),
            }
        }
        RowKey::Function(label) => format!("{label}  [{stacks}]"),
        RowKey::Module(path) => {
            let name = path.rsplit('/').next().unwrap_or(path);
            format!("{}  [{stacks}]", crate::export::one_line(name))
        }
    }
}

/// The table order for `sort`, descending, with a full tie-break so equal rows keep a fixed
/// order between snapshots.
pub(crate) fn compare_rows(a: &Row, b: &Row, sort: SortKey) -> Ordering {
    let bytes = |r: &Row| r.delta.map_or(i128::from(r.live_bytes), |(bytes, _)| bytes);
    let count = |r: &Row| {
        r.delta
            .map_or(i128::from(r.live_allocs), |(_, count)| count)
    };
    let primary = match sort {
        SortKey::LiveBytes => bytes(b).cmp(&bytes(a)),
        SortKey::Count => count(b).cmp(&count(a)),
        SortKey::Growth => descending_known_first(a.growth_per_s, b.growth_per_s),
        SortKey::Age => descending_known_first(a.oldest_age_s, b.oldest_age_s),
        SortKey::Verdict => severity(b.verdict).cmp(&severity(a.verdict)),
    };
    primary
        .then(b.live_bytes.cmp(&a.live_bytes))
        .then_with(|| a.key.cmp(&b.key))
}

/// Descending order of optional values, unknown values last.
fn descending_known_first(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// The sum of the known values, `None` when neither is known.
fn sum_known(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// The larger of the known values, `None` when neither is known.
fn max_known(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Adds `values` to `sum` element-wise, aligned on the last (newest) element; `sum` grows at the
/// front when `values` is longer.
pub(crate) fn add_aligned(sum: &mut Vec<u64>, values: &[u64]) {
    if values.len() > sum.len() {
        let missing = values.len() - sum.len();
        sum.splice(0..0, std::iter::repeat_n(0, missing));
    }
    let offset = sum.len() - values.len();
    for (total, &value) in sum.iter_mut().skip(offset).zip(values) {
        *total = total.saturating_add(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::testing::{sample_snapshot, stack_index};

    fn view(grouping: Grouping, sort: SortKey) -> View<'static> {
        View {
            filter: "",
            grouping,
            sort,
            baseline: None,
        }
    }

    fn keys(rows: &[Row]) -> Vec<RowKey> {
        rows.iter().map(|r| r.key.clone()).collect()
    }

    fn stack_ids(rows: &[Row]) -> Vec<u64> {
        rows.iter()
            .map(|r| match r.key {
                RowKey::Stack(id) => id,
                _ => panic!("not a stack row: {:?}", r.key),
            })
            .collect()
    }

    #[test]
    fn filters_ignore_case_in_and_beyond_ascii() {
        assert!(contains_folded("Session::Handle_Read", "handle_r"));
        assert!(!contains_folded("handle", "handle_r"));
        assert!(contains_folded("ÉCRIRE_tampon", "écrire"));
        assert!(contains_folded("", ""));
    }

    #[test]
    fn stack_rows_follow_the_report() {
        // Given the sample snapshot
        let snapshot = sample_snapshot();

        // When building rows by stack, sorted by live bytes
        let rows = build_rows(&snapshot, view(Grouping::Stack, SortKey::LiveBytes));

        // Then there is one row per stack, biggest first, with the stack's own figures
        assert_eq!(stack_ids(&rows), vec![1, 4, 5, 2, 6, 7, 3]);
        let top = &rows[0];
        assert_eq!(top.live_bytes, 1_572_864);
        assert_eq!(top.live_allocs, 3);
        assert_eq!(top.oldest_age_s, Some(12.5));
        assert_eq!(top.members, vec![stack_index(&snapshot, 1)]);
        assert_eq!(top.spark.len(), 13);
        assert_eq!(top.spark.last(), Some(&1_572_864));
        assert_eq!(top.growth_per_s, Some(131_072.0));
        assert_eq!(
            describe(&snapshot.report, top),
            "grow_buffer ← buffer_append (buffer.c:42)"
        );
        assert_eq!(top.delta, None);
    }

    #[test]
    fn rows_of_several_processes_say_their_pid_and_merge_by_path() {
        // Given the sample's top stack, and the same call path in a second process
        let mut snapshot = sample_snapshot();
        let top = stack_index(&snapshot, 1);
        let mut twin = snapshot.report.stacks[top].clone();
        twin.id = 99;
        twin.pid = 4343;
        snapshot.report.stacks.push(twin);
        snapshot.series.push(Series::default());
        snapshot.report.processes = vec![
            crate::report::TracedProcess {
                pid: 4242,
                command: "server".to_owned(),
                parent: None,
            },
            crate::report::TracedProcess {
                pid: 4343,
                command: "server".to_owned(),
                parent: Some(4242),
            },
        ];
        snapshot.report.stacks[top].pid = 4242;

        // When rows are by stack, then each process has its row, saying its pid
        let rows = build_rows(&snapshot, view(Grouping::Stack, SortKey::LiveBytes));
        let described: Vec<String> = rows[..2]
            .iter()
            .map(|r| describe(&snapshot.report, r))
            .collect();
        assert_eq!(
            described,
            [
                "[pid 4242] grow_buffer ← buffer_append (buffer.c:42)",
                "[pid 4343] grow_buffer ← buffer_append (buffer.c:42)"
            ]
        );

        // And by call path, the two are one row holding both
        let merged = build_rows(&snapshot, view(Grouping::Path, SortKey::LiveBytes));
        assert_eq!(merged.len(), rows.len() - 1);
        assert_eq!(merged[0].live_bytes, 2 * 1_572_864);
        assert_eq!(
            describe(&snapshot.report, &merged[0]),
            "[2 processes] grow_buffer ← buffer_append (buffer.c:42)"
        );
    }

    #[test]
    fn sort_orders_are_descending_with_unknown_last() {
        let snapshot = sample_snapshot();
        let sorted = |sort| stack_ids(&build_rows(&snapshot, view(Grouping::Stack, sort)));

        // Growth: stack 3 shrank, stack 7 has a single sample (unknown growth)
        assert_eq!(sorted(SortKey::Growth), vec![1, 4, 5, 6, 2, 3, 7]);
        // Count: ties on count are broken by live bytes
        assert_eq!(sorted(SortKey::Count), vec![4, 5, 6, 1, 2, 7, 3]);
        // Age: stack 3 has nothing live, so no age
        assert_eq!(sorted(SortKey::Age), vec![1, 4, 6, 5, 2, 7, 3]);
        // Verdict: leak 1, growing 4, steady 5 and 2, churn 6 and 3, unknown 7; ties by live
        // bytes
        assert_eq!(sorted(SortKey::Verdict), vec![1, 4, 5, 2, 6, 3, 7]);
    }

    #[test]
    fn verdicts_rank_by_severity() {
        use crate::report::analytics::Verdict::*;
        let order = [Leak, Growing, Steady, Churn, Unknown];
        for (i, &a) in order.iter().enumerate() {
            for (j, &b) in order.iter().enumerate() {
                assert_eq!(severity(a) > severity(b), i < j, "{a} vs {b}");
                let worst = if i <= j { a } else { b };
                assert_eq!(most_severe(a, b), worst, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn rows_carry_their_stacks_verdict() {
        let snapshot = sample_snapshot();
        let rows = build_rows(&snapshot, view(Grouping::Stack, SortKey::LiveBytes));
        for row in &rows {
            let stack = &snapshot.report.stacks[row.members[0]];
            assert_eq!(row.verdict, stack.verdict, "stack {}", stack.id);
        }
    }

    #[test]
    fn groups_take_their_most_severe_members_verdict() {
        use crate::report::analytics::Verdict;
        let snapshot = sample_snapshot();
        let verdict_of = |grouping, key: RowKey| {
            build_rows(&snapshot, view(grouping, SortKey::LiveBytes))
                .into_iter()
                .find(|r| r.key == key)
                .map(|r| r.verdict)
        };
        let function = |name: &str| RowKey::Function(name.to_owned());
        let module = |path: &str| RowKey::Module(path.to_owned());
        // alloc_buffer: growing (4) and steady (5)
        assert_eq!(
            verdict_of(Grouping::Function, function("alloc_buffer")),
            Some(Verdict::Growing)
        );
        // The server: leak (1), growing (4), steady (5), churn (3)
        assert_eq!(
            verdict_of(Grouping::Module, module("/usr/bin/server")),
            Some(Verdict::Leak)
        );
        // A group of one keeps its stack's verdict, unknown included
        assert_eq!(
            verdict_of(Grouping::Module, module("[unknown]")),
            Some(Verdict::Unknown)
        );
        assert_eq!(
            verdict_of(Grouping::Function, function("g_malloc")),
            Some(Verdict::Churn)
        );

        // When a member of a group turns into a leak, so does the group, and sorting by
        // verdict puts it first
        let mut snapshot = snapshot;
        let i5 = stack_index(&snapshot, 5);
        snapshot.report.stacks[i5].verdict = Verdict::Leak;
        let i1 = stack_index(&snapshot, 1);
        snapshot.report.stacks[i1].verdict = Verdict::Steady;
        let rows = build_rows(&snapshot, view(Grouping::Function, SortKey::Verdict));
        assert_eq!(rows[0].key, function("alloc_buffer"));
        assert_eq!(rows[0].verdict, Verdict::Leak);
        assert_eq!(rows[1].key, function("grow_buffer"));
    }

    #[test]
    fn sort_keys_and_groupings_cycle() {
        let mut sort = SortKey::default();
        let mut seen = vec![sort];
        for _ in 0..5 {
            sort = sort.next();
            seen.push(sort);
        }
        use SortKey::*;
        assert_eq!(
            seen,
            vec![LiveBytes, Growth, Count, Age, Verdict, LiveBytes]
        );
        let g = Grouping::default();
        assert_eq!(g, Grouping::Stack);
        assert_eq!(g.next(), Grouping::Path);
        assert_eq!(g.next().next(), Grouping::Function);
        assert_eq!(g.next().next().next(), Grouping::Module);
        assert_eq!(g.next().next().next().next(), Grouping::Stack);
        assert_eq!(Grouping::Path.count(2), "2 call paths (processes merged)");
        assert_eq!(Grouping::Stack.count(1), "1 stack");
        assert_eq!(Grouping::Function.count(0), "0 allocating functions");
        assert_eq!(Grouping::Module.count(1), "1 module");
    }

    #[test]
    fn function_groups_sum_their_members() {
        // Given stacks 4 and 5, both allocating in alloc_buffer
        let snapshot = sample_snapshot();

        // When grouping by allocating function
        let rows = build_rows(&snapshot, view(Grouping::Function, SortKey::LiveBytes));

        // Then they form one row with summed figures
        let group = rows
            .iter()
            .find(|r| r.key == RowKey::Function("alloc_buffer".to_owned()))
            .expect("an alloc_buffer group");
        let s4 = &snapshot.report.stacks[stack_index(&snapshot, 4)];
        let s5 = &snapshot.report.stacks[stack_index(&snapshot, 5)];
        assert_eq!(group.live_bytes, s4.live_bytes + s5.live_bytes);
        assert_eq!(group.live_allocs, s4.live_allocs + s5.live_allocs);
        assert_eq!(group.oldest_age_s, Some(8.0));
        assert_eq!(
            group.members,
            vec![stack_index(&snapshot, 4), stack_index(&snapshot, 5)]
        );
        assert_eq!(group.growth_per_s, Some(4096.0 + 2048.0));
        assert_eq!(
            describe(&snapshot.report, group),
            "alloc_buffer  [2 stacks]"
        );
        // The series are summed aligned on the newest sample (stack 5 started later)
        let spark4 = snapshot.series[stack_index(&snapshot, 4)].last(SPARK_SAMPLES);
        let spark5 = snapshot.series[stack_index(&snapshot, 5)].last(SPARK_SAMPLES);
        assert!(spark5.len() < spark4.len());
        assert_eq!(group.spark.len(), spark4.len());
        assert_eq!(group.spark.last(), Some(&(s4.live_bytes + s5.live_bytes)));
        assert_eq!(group.spark[0], spark4[0]);
        // Every other stack has its own function
        assert_eq!(rows.len(), 6);
        assert!(
            rows.iter()
                .any(|r| r.key == RowKey::Function("[no stack]".to_owned()))
        );
        assert!(
            rows.iter()
                .any(|r| r.key == RowKey::Function("[libfoo.so.1] 0x7f3a00001234".to_owned()))
        );
    }

    #[test]
    fn module_groups_use_the_allocating_frames_module() {
        let snapshot = sample_snapshot();
        let rows = build_rows(&snapshot, view(Grouping::Module, SortKey::LiveBytes));
        assert_eq!(
            keys(&rows),
            vec![
                RowKey::Module("/usr/bin/server".to_owned()),
                RowKey::Module("/usr/lib/libfoo.so.1".to_owned()),
                RowKey::Module("/usr/lib/libglib-2.0.so.0".to_owned()),
                RowKey::Module("[unknown]".to_owned()),
            ]
        );
        assert_eq!(rows[0].members.len(), 4);
        assert_eq!(describe(&snapshot.report, &rows[0]), "server  [4 stacks]");
        assert_eq!(
            describe(&snapshot.report, &rows[2]),
            "libglib-2.0.so.0  [1 stack]"
        );
        let total: u64 = rows.iter().map(|r| r.live_bytes).sum();
        assert_eq!(
            total,
            snapshot
                .report
                .stacks
                .iter()
                .map(|s| s.live_bytes)
                .sum::<u64>()
        );
    }

    #[test]
    fn filters_match_function_and_module_names_case_insensitively() {
        let snapshot = sample_snapshot();
        let report = &snapshot.report;
        let ids = |filter: &str| -> Vec<u64> {
            visible_stacks(report, filter)
                .into_iter()
                .map(|i| report.stacks[i].id)
                .collect()
        };
        // Any frame's function, not only the first
        assert_eq!(ids("PARSE_header"), vec![4, 3]);
        // Module names (the last path component)
        assert_eq!(ids("libglib"), vec![6]);
        assert_eq!(ids("LIBBAR"), vec![2]);
        // Paths before the module name do not match, nor do files
        assert_eq!(ids("/usr/lib"), Vec::<u64>::new());
        assert_eq!(ids("leaky.c"), Vec::<u64>::new());
        assert_eq!(ids("").len(), report.stacks.len());

        // The rows honour the filter
        let rows = build_rows(
            &snapshot,
            View {
                filter: "alloc_BUFFER",
                ..view(Grouping::Function, SortKey::LiveBytes)
            },
        );
        assert_eq!(
            keys(&rows),
            vec![RowKey::Function("alloc_buffer".to_owned())]
        );
    }

    #[test]
    fn baseline_deltas_are_per_stack_and_summed_in_groups() {
        // Given a baseline taken from the sample, then stack 1 grows, stack 4 shrinks and
        // stack 3 is new since the baseline
        let mut snapshot = sample_snapshot();
        let mut baseline = Baseline::of(&snapshot.report);
        baseline.stacks.remove(&3);
        let i1 = stack_index(&snapshot, 1);
        let i4 = stack_index(&snapshot, 4);
        snapshot.report.stacks[i1].live_bytes += 1000;
        snapshot.report.stacks[i1].live_allocs += 2;
        snapshot.report.stacks[i4].live_bytes -= 4096;
        snapshot.report.stacks[i4].live_allocs -= 1;
        assert_eq!(baseline.at_s, 12.75);

        // When building rows with the baseline
        let with = |grouping| {
            build_rows(
                &snapshot,
                View {
                    baseline: Some(&baseline),
                    ..view(grouping, SortKey::LiveBytes)
                },
            )
        };
        let rows = with(Grouping::Stack);

        // Then each row carries its change, and the live-bytes order follows the change
        let delta = |id| {
            rows.iter()
                .find(|r| r.key == RowKey::Stack(id))
                .and_then(|r| r.delta)
        };
        assert_eq!(delta(1), Some((1000, 2)));
        assert_eq!(delta(4), Some((-4096, -1)));
        assert_eq!(delta(3), Some((0, 0)));
        assert_eq!(delta(2), Some((0, 0)));
        assert_eq!(rows[0].key, RowKey::Stack(1));
        assert_eq!(rows.last().map(|r| r.key.clone()), Some(RowKey::Stack(4)));

        // And groups sum their members' changes
        let groups = with(Grouping::Function);
        let alloc = groups
            .iter()
            .find(|r| r.key == RowKey::Function("alloc_buffer".to_owned()))
            .expect("an alloc_buffer group");
        assert_eq!(alloc.delta, Some((-4096, -1)));
    }

    #[test]
    fn missing_series_and_empty_reports_are_fine() {
        let mut snapshot = sample_snapshot();
        snapshot.series.clear();
        let rows = build_rows(&snapshot, view(Grouping::Function, SortKey::Growth));
        assert!(rows.iter().all(|r| r.spark.is_empty()));
        // The growth column is the report's fit, so it stays without a series
        let fitted = |name: &str| {
            rows.iter()
                .find(|r| r.key == RowKey::Function(name.to_owned()))
                .and_then(|r| r.growth_per_s)
        };
        assert_eq!(fitted("grow_buffer"), Some(131_072.0));
        snapshot.report.stacks.clear();
        assert!(build_rows(&snapshot, view(Grouping::Stack, SortKey::Age)).is_empty());
    }

    #[test]
    fn aligned_sums_line_up_the_newest_samples() {
        let mut sum = vec![1, 2];
        add_aligned(&mut sum, &[10, 20, 30]);
        assert_eq!(sum, vec![10, 21, 32]);
        add_aligned(&mut sum, &[5]);
        assert_eq!(sum, vec![10, 21, 37]);
        add_aligned(&mut sum, &[]);
        assert_eq!(sum, vec![10, 21, 37]);
        let mut big = vec![u64::MAX];
        add_aligned(&mut big, &[1]);
        assert_eq!(big, vec![u64::MAX]);
    }
}
