//! The path every source's data takes: batches into the heap and the stack table, samples into
//! the history, and all of them into one [`Report`].
//!
//! The pipeline holds no source and does no I/O but symbol lookups: the session reads the
//! target's mappings and polls the sources, and hands what they yield here.
use crate::{
    heap::{Heap, SourceId, StackRef, Totals, history::History},
    report::{
        Diagnostics, Report,
        analytics::Thresholds,
        build::{self, Header, Inputs},
        grouping::GroupBy,
    },
    source::{Batch, Health, Yields},
    symbolize::{ModuleMap, StackSymbolizer, debuginfo::DebugDirs, stacks::Stacks},
    target::Mapping,
};

/// How rows are made and judged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PipelineConfig {
    /// `--group-by`.
    pub group_by: GroupBy,
    /// `--window`: verdict thresholds.
    pub thresholds: Thresholds,
    /// `--min-age`: live figures count only blocks at least this old.
    pub min_age_ns: u64,
}

/// From batches to reports.
#[derive(Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    heap: Heap,
    modules: ModuleMap,
    symbolizer: StackSymbolizer,
    stacks: Stacks,
    history: History,
    /// The process of each source, by [`SourceId`].
    source_pids: Vec<u32>,
}

impl Pipeline {
    /// An empty pipeline, finding debug files in `dirs`.
    pub fn new(dirs: &DebugDirs, config: PipelineConfig) -> Self {
        Self {
            config,
            heap: Heap::new(),
            modules: ModuleMap::new(dirs.clone()),
            symbolizer: StackSymbolizer::new(dirs),
            stacks: Stacks::new(config.group_by),
            history: History::default(),
            source_pids: Vec::new(),
        }
    }

    /// Adds a source of process `pid` whose figures are kept as `yields` says.
    pub fn add_source(&mut self, pid: u32, yields: Yields) -> SourceId {
        self.source_pids.push(pid);
        self.heap.add_source(yields)
    }

    /// Process `pid`'s mappings as read now: the modules its new stacks are pinned to.
    pub fn mappings_changed(&mut self, pid: u32, maps: &[Mapping]) {
        self.modules.update(pid, maps);
    }

    /// Takes in one batch of `source` at `now_ns`: its new stacks are pinned to the modules
    /// mapped now (call [`Self::mappings_changed`] first when it has any), its events and
    /// snapshot go to the heap.
    pub fn ingest(&mut self, source: SourceId, batch: &Batch, now_ns: u64) {
        for stack in &batch.stacks {
            let at = StackRef {
                source,
                key: stack.key,
            };
            let pid = self
                .source_pids
                .get(usize::from(source.0))
                .copied()
                .unwrap_or_default();
            self.stacks.insert(at, pid, stack, &self.modules);
        }
        self.heap.ingest(source, batch, now_ns);
    }

    /// Applies the events old enough at `now_ns`.
    pub fn advance(&mut self, now_ns: u64) {
        self.heap.advance_until(now_ns);
    }

    /// Applies every event still buffered, for the final report.
    pub fn flush(&mut self) {
        self.heap.flush();
    }

    /// Records every row's live bytes at `t_s` seconds into the run: the history growth and
    /// verdicts are fitted to.
    pub fn sample(&mut self, t_s: f64, now_ns: u64) {
        self.stacks.symbolize(&mut self.symbolizer, &self.modules);
        let by_row = self.stacks.by_row(self.heap.live_bytes_by_stack(now_ns));
        self.history.record(t_s, by_row);
    }

    /// The report of every row at `now_ns`, sorted, with the sources' counters, the heap's,
    /// then the session's own (`session`).
    pub fn report(
        &mut self,
        header: Header,
        now_ns: u64,
        sources: Vec<Health>,
        session: Vec<Health>,
    ) -> Report {
        self.stacks.symbolize(&mut self.symbolizer, &self.modules);
        let stats = self.heap.stack_stats(now_ns, self.config.min_age_ns);
        let totals = self.heap.totals(&stats);
        let mut diagnostics = sources;
        diagnostics.extend(self.heap.health());
        diagnostics.extend(self.history.health());
        diagnostics.extend(self.modules.health());
        diagnostics.extend(session);
        build::build(
            header,
            Inputs {
                stats: &stats,
                totals: &totals,
                stacks: &self.stacks,
                history: &self.history,
                thresholds: &self.config.thresholds,
            },
            Diagnostics(diagnostics),
        )
    }

    /// Whole-process counters as counted so far, for the status line.
    pub fn counts(&self) -> Totals {
        self.heap.counts()
    }

    /// Live bytes over time by row.
    pub fn history(&self) -> &History {
        &self.history
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        heap::history::Series,
        report::StackReport,
        session::live,
        source::{HealthKind, HeapEvent, NewStack, Source, StackFigures},
        target::Process,
    };

    /// Functions of this test binary, so the fake stacks symbolize to real names.
    #[inline(never)]
    fn leaky_path() -> u64 {
        std::hint::black_box(leaky_path as *const () as u64)
    }

    #[inline(never)]
    fn churning_path() -> u64 {
        std::hint::black_box(churning_path as *const () as u64)
    }

    const LEAK: u64 = 11;
    const CHURN: u64 = 22;
    const NS: u64 = 1_000_000_000;

    fn stacks() -> Vec<NewStack> {
        // A return address points after its call: one byte into each function.
        [(LEAK, leaky_path()), (CHURN, churning_path())]
            .into_iter()
            .map(|(key, function)| NewStack {
                runtime_prefixes: &[],
                key,
                ips: vec![function + 1],
                allocator: Arc::from("fake"),
                ..NewStack::default()
            })
            .collect()
    }

    /// An event source: by second `t`, the leak has made `t` blocks of 100 B and kept them; the
    /// churn has made and freed one block of 50 B a second.
    struct FakeEvents {
        t: u64,
    }

    impl Source for FakeEvents {
        fn name(&self) -> String {
            "fake events".into()
        }
        fn yields(&self) -> Yields {
            Yields::Events {
                sample_mean_bytes: None,
                in_order: false,
            }
        }
        fn poll(&mut self, out: &mut Batch) {
            if self.t == 0 {
                out.stacks = stacks();
            }
            self.t += 1;
            let at = self.t * NS;
            out.events.extend([
                HeapEvent::alloc(at, 0x1000 * self.t, 100, LEAK),
                HeapEvent::alloc(at, 0x10, 50, CHURN),
                HeapEvent::free(at, 0x10),
            ]);
        }
        fn stop(&mut self, _cutoff_ns: u64) {}
        fn health(&self) -> Vec<Health> {
            vec![Health::new("fake_lost", 0, HealthKind::Lost)]
        }
    }

    /// A snapshot source describing the same heap as [`FakeEvents`], whole, every second.
    struct FakeSnapshots {
        t: u64,
    }

    impl Source for FakeSnapshots {
        fn name(&self) -> String {
            "fake snapshots".into()
        }
        fn yields(&self) -> Yields {
            Yields::Snapshots
        }
        fn poll(&mut self, out: &mut Batch) {
            if self.t == 0 {
                out.stacks = stacks();
            }
            self.t += 1;
            let t = self.t;
            out.snapshot = Some(vec![
                (
                    LEAK,
                    StackFigures {
                        live_bytes: 100 * t,
                        live_allocs: t,
                        total_allocs: t,
                        total_bytes: 100 * t,
                    },
                ),
                (
                    CHURN,
                    StackFigures {
                        live_bytes: 0,
                        live_allocs: 0,
                        total_allocs: t,
                        total_bytes: 50 * t,
                    },
                ),
            ]);
        }
        fn stop(&mut self, _cutoff_ns: u64) {}
        fn health(&self) -> Vec<Health> {
            vec![Health::new("fake_lost", 0, HealthKind::Lost)]
        }
    }

    /// Runs `source` through a pipeline for `seconds`, as the session does, and returns the
    /// final report and what the live view would be sent.
    fn drive(mut source: impl Source, seconds: u64) -> (Report, crate::tui::snapshot::Snapshot) {
        let me = Process::open(std::process::id()).expect("this process");
        let mut pipeline = Pipeline::new(
            &DebugDirs::default(),
            PipelineConfig {
                group_by: GroupBy::Source,
                thresholds: Thresholds::for_window(60.0),
                min_age_ns: 0,
            },
        );
        pipeline.mappings_changed(me.pid, &me.maps().expect("own maps"));
        let id = pipeline.add_source(me.pid, source.yields());
        let mut batch = Batch::default();
        for second in 1..=seconds {
            batch.clear();
            source.poll(&mut batch);
            let now_ns = second * NS + NS / 2;
            pipeline.ingest(id, &batch, now_ns);
            pipeline.advance(now_ns);
            pipeline.sample(second as f64, now_ns);
        }
        source.stop(seconds * NS + NS / 2);
        pipeline.flush();
        let now_ns = seconds * NS + NS / 2;
        let report = pipeline.report(Header::default(), now_ns, source.health(), Vec::new());
        let view = live::snapshot(
            report.clone(),
            pipeline.history(),
            &[],
            None,
            (0.0, 0.0),
            None,
        );
        (report, view)
    }

    /// What a row shows, beside the figures only an event source has (ages).
    fn shown(row: &StackReport) -> (Vec<String>, String, u64, u64, u64, u64) {
        (
            row.frames.iter().map(|f| f.label()).collect(),
            row.allocator.clone(),
            row.live_bytes,
            row.live_allocs,
            row.total_allocs,
            row.total_bytes,
        )
    }

    #[test]
    fn an_event_source_and_a_snapshot_source_drive_the_same_rows() {
        // Given the same heap yielded as events and as whole-heap snapshots
        let (events, events_view) = drive(FakeEvents { t: 0 }, 90);
        let (snapshots, snapshots_view) = drive(FakeSnapshots { t: 0 }, 90);

        // Then both reports have the same rows, named from this binary, with the same figures
        let rows: Vec<_> = events.stacks.iter().map(shown).collect();
        assert_eq!(rows, snapshots.stacks.iter().map(shown).collect::<Vec<_>>());
        assert_eq!(rows.len(), 2);
        let (frames, allocator, live, blocks, total, bytes) = &rows[0];
        assert!(frames[0].contains("leaky_path"), "{frames:?}");
        assert_eq!(allocator, "fake");
        assert_eq!((*live, *blocks, *total, *bytes), (9000, 90, 90, 9000));
        assert!(rows[1].0[0].contains("churning_path"), "{:?}", rows[1].0);
        assert_eq!((rows[1].2, rows[1].4, rows[1].5), (0, 90, 4500));
        assert_eq!(events.totals.live_bytes, snapshots.totals.live_bytes);

        // and the same growth and verdicts: the leak climbs 100 B/s, the churn holds nothing
        for report in [&events, &snapshots] {
            let leak = &report.stacks[0];
            let growth = leak.growth_bytes_per_s.expect("a fitted growth");
            assert!((growth - 100.0).abs() < 1e-6, "{growth}");
            assert_eq!(leak.verdict.as_str(), "leak");
            assert_eq!(report.stacks[1].verdict.as_str(), "churn");
            assert_eq!(report.diagnostics.get("fake_lost"), 0);
        }

        // and the live view is sent the same rows with the same histories
        let view_rows = |view: &crate::tui::snapshot::Snapshot| -> Vec<_> {
            view.report.stacks.iter().map(shown).collect()
        };
        assert_eq!(view_rows(&events_view), view_rows(&snapshots_view));
        let last = |s: &Series| s.last(3);
        assert_eq!(
            events_view.series.iter().map(last).collect::<Vec<_>>(),
            snapshots_view.series.iter().map(last).collect::<Vec<_>>()
        );
        assert_eq!(last(&events_view.series[0]), [8800, 8900, 9000]);
    }
}
