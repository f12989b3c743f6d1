//! Leak or pressure? Classifies a stack from its live-bytes history ([`Series`]) and a few facts
//! about its live blocks.
//!
//! A stack whose live bytes rise is not necessarily leaking: a cache filling up, a queue under a
//! burst and a leak all rise for a while. What tells them apart is whether the rise goes on and
//! whether the *old* blocks stay: a leak keeps every block it ever allocated, so its oldest live
//! block is about as old as the observation and its live bytes climb in a straight line.
//!
//! - [`growth`]: least-squares slope of live bytes over the last `window_s` seconds, with the fit's
//!   R².
//! - [`AgeHistogram`]: live blocks counted by age in fixed log-scale buckets ([`BOUNDS`]).
//! - [`verdict`]: one of [`Verdict`]'s five answers, from [`VerdictInput`] and [`Thresholds`].
//!
//! Everything here is pure and costs O(samples) per stack: [`verdict`] fits two windows of the
//! series, two passes each.
//!
//! # Thresholds
//!
//! [`Thresholds::default`]:
//!
//! | field | default | meaning |
//! |---|---:|---|
//! | `window_s` | 600 s | the long window the trend is fitted over ([`crate::heap::history::MAX_SAMPLES`] at one sample per second) |
//! | `recent_window_s` | 120 s | the short window that says whether the stack is still moving |
//! | `churn_max_age_s` | 5 s | blocks younger than this are short-lived |
//! | `leak_min_window_s` | 60 s | history a leak verdict needs |
//! | `leak_min_r2` | 0.8 | R² of a leak's linear fit |
//! | `growing_min_r2` | 0.5 | R² of any significant trend |
//! | `min_growth_bytes` | 64 KiB | a fitted rise this large is significant ... |
//! | `min_growth_frac` | 0.10 | ... and so is one of 10 % of the fitted live bytes at the window's start |
//! | `leak_min_age_frac` | 0.8 | a leak's oldest live block is at least this fraction of the window old |
//! | `leak_min_recent_frac` | 0.25 | a leak's recent slope is at least this fraction of its long-window slope |
//! | `leak_old_age_s` | 10 s | with an [`AgeHistogram`]: blocks at least this old count as old ... |
//! | `leak_min_old_frac` | 0.5 | ... and a leak has at least this fraction of its live blocks old |
//! | `steady_max_slope_frac` | 0.01 | flat: \|slope\| per minute at most 1 % of the mean live bytes |
//!
//! # Rules
//!
//! Checked in this order; "rising" means slope > 0, R² at least the given value and a
//! significant fitted rise (slope × time covered ≥ `min_growth_bytes`, or ≥ `min_growth_frac` ×
//! the fitted value at the window's start).
//!
//! 1. **Unknown**: fewer than 3 samples in `window_s` (or all at one instant).
//! 2. **Churn**: nothing live (live bytes or live blocks 0).
//! 3. Young stacks, whose every live block is younger than `churn_max_age_s` (or whose age is
//!    unknown): **Growing** when either window is rising (R² ≥ `growing_min_r2`), else
//!    **Churn** when blocks were freed (`total_allocs > live_allocs`), else **Unknown** (a stack
//!    this new that never freed anything cannot be told apart yet).
//! 4. **Leak**: the long window covers at least `leak_min_window_s`, is rising with
//!    R² ≥ `leak_min_r2`, the oldest live block is at least `leak_min_age_frac` × the time covered
//!    old (the early blocks are still live), the recent slope is at least `leak_min_recent_frac` ×
//!    the long one (still growing), and, with a histogram, at least `leak_min_old_frac` of the
//!    live blocks are `leak_old_age_s` or older (not one old block in front of a young backlog).
//! 5. **Steady**: the recent window is flat (a cache at capacity, or a leak that stopped).
//! 6. **Growing**: either window is rising with R² ≥ `growing_min_r2` (short history, a noisier
//!    trend, or growth whose old blocks do die).
//! 7. **Steady** otherwise: old blocks live and no significant upward trend (noise, shrinking).
#![warn(missing_docs)]

use std::fmt;

use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};

use crate::heap::history::Series;

/// Fewest samples a fit needs.
pub const MIN_SAMPLES: usize = 3;

/// Number of [`AgeHistogram`] buckets.
pub const AGE_BUCKETS: usize = 7;

/// Upper bounds (exclusive), in seconds, of every [`AgeHistogram`] bucket but the last:
/// `< 1 s`, `< 10 s`, `< 1 min`, `< 10 min`, `< 1 h`, `< 6 h`; the last bucket holds `>= 6 h`.
pub const BOUNDS: [f64; AGE_BUCKETS - 1] = [1.0, 10.0, 60.0, 600.0, 3600.0, 21_600.0];

/// The bucket names, used as the JSON keys of an [`AgeHistogram`].
pub const LABELS: [&str; AGE_BUCKETS] = ["<1s", "<10s", "<1m", "<10m", "<1h", "<6h", ">=6h"];

/// Seconds per hour.
const S_PER_H: f64 = 3600.0;

/// Seconds per minute, for the per-minute flatness threshold.
const S_PER_MIN: f64 = 60.0;

/// A linear trend of live bytes over time, as fitted by [`growth`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Growth {
    /// Least-squares slope, in bytes per second.
    pub bytes_per_s: f64,
    /// The same slope in bytes per hour.
    pub bytes_per_h: f64,
    /// Goodness of the linear fit, 0 to 1 (1 when every value is equal).
    pub r_squared: f64,
    /// Time covered by the samples used: newest minus oldest, in seconds (at most the window
    /// asked for).
    pub window_s: f64,
    /// Samples used.
    pub samples: usize,
}

/// The least-squares line through the samples of the last `window_s` seconds (those whose time is
/// at most `window_s` before the newest). `None` with fewer than [`MIN_SAMPLES`] samples, or
/// when they all share one time.
pub fn growth(series: &Series, window_s: f64) -> Option<Growth> {
    fit(series, window_s).map(|f| Growth {
        bytes_per_s: f.slope,
        bytes_per_h: f.slope * S_PER_H,
        r_squared: f.r_squared,
        window_s: f.span_s,
        samples: f.samples,
    })
}

/// What [`fit`] finds: [`Growth`] plus the figures the verdict needs.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Fit {
    slope: f64,
    r_squared: f64,
    span_s: f64,
    samples: usize,
    /// Mean live bytes in the window.
    mean: f64,
    /// The fitted line's value at the window's first sample.
    start: f64,
    /// The newest sample's live bytes.
    last: u64,
}

fn fit(series: &Series, window_s: f64) -> Option<Fit> {
    let &(t_last, last) = series.samples.back()?;
    let first = series
        .samples
        .partition_point(|&(t, _)| t_last - t > window_s);
    let window = series.samples.range(first..);
    let samples = window.len();
    if samples < MIN_SAMPLES {
        return None;
    }
    let n = samples as f64;
    let (sum_t, sum_y) = window
        .clone()
        .fold((0.0, 0.0), |(st, sy), &(t, y)| (st + t, sy + y as f64));
    let (mean_t, mean) = (sum_t / n, sum_y / n);
    // Second pass on centred values: no cancellation with large times or byte counts.
    let (sxx, sxy, syy) = window
        .clone()
        .fold((0.0, 0.0, 0.0), |(sxx, sxy, syy), &(t, y)| {
            let (dt, dy) = (t - mean_t, y as f64 - mean);
            (sxx + dt * dt, sxy + dt * dy, syy + dy * dy)
        });
    if sxx.is_nan() || sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r_squared = if syy > 0.0 {
        (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let t_first = window.clone().next().map_or(t_last, |&(t, _)| t);
    Some(Fit {
        slope,
        r_squared,
        span_s: t_last - t_first,
        samples,
        mean,
        start: mean - slope * (mean_t - t_first),
        last,
    })
}

/// Live blocks counted by age. Bucket `i` holds ages below [`BOUNDS`]`[i]` (and at least the
/// previous bound); the last holds everything from 6 h up.
///
/// Serialized as an object keyed by [`LABELS`], in bucket order:
/// `{"<1s": 12, "<10s": 3, "<1m": 0, "<10m": 0, "<1h": 0, "<6h": 0, ">=6h": 1}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgeHistogram {
    /// Counts per bucket.
    pub buckets: [u64; AGE_BUCKETS],
}

/// The bucket an age in seconds falls in. Negative ages and NaN go to the first bucket.
pub fn bucket_of(age_s: f64) -> usize {
    if age_s.is_nan() {
        return 0;
    }
    BOUNDS
        .iter()
        .position(|&bound| age_s < bound)
        .unwrap_or(AGE_BUCKETS - 1)
}

impl AgeHistogram {
    /// Counts one block of age `age_s`.
    pub fn add(&mut self, age_s: f64) {
        self.add_n(age_s, 1);
    }

    /// Counts `n` blocks of age `age_s`.
    pub fn add_n(&mut self, age_s: f64, n: u64) {
        if let Some(bucket) = self.buckets.get_mut(bucket_of(age_s)) {
            *bucket = bucket.saturating_add(n);
        }
    }

    /// Adds `other`'s counts, bucket by bucket.
    pub fn absorb(&mut self, other: &AgeHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// Blocks counted.
    pub fn total(&self) -> u64 {
        self.buckets.iter().fold(0, |a, &b| a.saturating_add(b))
    }

    /// Blocks certainly at least `age_s` old: those in buckets whose lower bound is `age_s` or
    /// more (so `count_at_least(10.0)` counts from the `<1m` bucket up, and an age between two
    /// bounds rounds up to the next bound).
    pub fn count_at_least(&self, age_s: f64) -> u64 {
        let lower_bounds = std::iter::once(0.0).chain(BOUNDS);
        self.buckets
            .iter()
            .zip(lower_bounds)
            .filter(|&(_, lower)| lower >= age_s)
            .fold(0, |a, (&b, _)| a.saturating_add(b))
    }
}

impl FromIterator<f64> for AgeHistogram {
    fn from_iter<I: IntoIterator<Item = f64>>(ages: I) -> Self {
        let mut histogram = Self::default();
        for age in ages {
            histogram.add(age);
        }
        histogram
    }
}

impl Serialize for AgeHistogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(AGE_BUCKETS))?;
        for (label, count) in LABELS.iter().zip(self.buckets) {
            map.serialize_entry(label, &count)?;
        }
        map.end()
    }
}

/// What a stack's live bytes are doing. Serialized and displayed in lowercase (`"leak"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Growing steadily for a while, and the early blocks are still live.
    Leak,
    /// Rising, but not (yet) with the history or regularity of a leak.
    Growing,
    /// Bounded: holding old blocks without a significant upward trend.
    Steady,
    /// Nothing held for long: blocks are freed soon after they are allocated.
    Churn,
    /// Not enough history to say.
    #[default]
    Unknown,
}

impl Verdict {
    /// The lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Leak => "leak",
            Verdict::Growing => "growing",
            Verdict::Steady => "steady",
            Verdict::Churn => "churn",
            Verdict::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits [`verdict`] decides with; see the table in the module documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// The long window the trend is fitted over, in seconds.
    pub window_s: f64,
    /// The short window that says whether the stack is still moving, in seconds.
    pub recent_window_s: f64,
    /// Blocks younger than this (seconds) are short-lived.
    pub churn_max_age_s: f64,
    /// Time a leak verdict needs the long window to cover, in seconds.
    pub leak_min_window_s: f64,
    /// Least R² of a leak's fit.
    pub leak_min_r2: f64,
    /// Least R² of any significant trend.
    pub growing_min_r2: f64,
    /// A fitted rise of at least this many bytes is significant.
    pub min_growth_bytes: u64,
    /// A fitted rise of at least this fraction of the fitted start value is significant.
    pub min_growth_frac: f64,
    /// A leak's oldest live block is at least this fraction of the time covered old.
    pub leak_min_age_frac: f64,
    /// A leak's recent slope is at least this fraction of its long-window slope.
    pub leak_min_recent_frac: f64,
    /// With a histogram: blocks at least this old (seconds, rounded up to a [`BOUNDS`] value)
    /// count as old.
    pub leak_old_age_s: f64,
    /// With a histogram: a leak has at least this fraction of its live blocks old.
    pub leak_min_old_frac: f64,
    /// Flat: |slope| per minute at most this fraction of the mean live bytes.
    pub steady_max_slope_frac: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window_s: 600.0,
            recent_window_s: 120.0,
            churn_max_age_s: 5.0,
            leak_min_window_s: 60.0,
            leak_min_r2: 0.8,
            growing_min_r2: 0.5,
            min_growth_bytes: 64 * 1024,
            min_growth_frac: 0.10,
            leak_min_age_frac: 0.8,
            leak_min_recent_frac: 0.25,
            leak_old_age_s: 10.0,
            leak_min_old_frac: 0.5,
            steady_max_slope_frac: 0.01,
        }
    }
}

/// What [`verdict`] knows about one stack.
#[derive(Clone, Copy, Debug)]
pub struct VerdictInput<'a> {
    /// Live bytes over time, oldest first; the newest sample is the current live bytes.
    pub series: &'a Series,
    /// Blocks live now.
    pub live_allocs: u64,
    /// Allocations since attach.
    pub total_allocs: u64,
    /// Age of the oldest live block, in seconds, on the same clock as the series.
    pub oldest_age_s: Option<f64>,
    /// Live blocks by age, when the caller has them.
    pub ages: Option<&'a AgeHistogram>,
}

impl Thresholds {
    /// The defaults, with the analysis window set to `window_s` and the windows derived from it
    /// scaled alike (recent window a fifth of it, least history for a leak a tenth), so
    /// `--window 60` judges in a minute what the default judges in ten.
    pub fn for_window(window_s: f64) -> Self {
        let defaults = Self::default();
        let scale = window_s / defaults.window_s;
        Self {
            window_s,
            recent_window_s: defaults.recent_window_s * scale,
            leak_min_window_s: defaults.leak_min_window_s * scale,
            churn_max_age_s: defaults.churn_max_age_s.min(window_s / 12.0),
            leak_old_age_s: defaults.leak_old_age_s.min(window_s / 6.0),
            ..defaults
        }
    }
}

/// Classifies one stack; see the rules in the module documentation.
pub fn verdict(input: &VerdictInput<'_>, thresholds: &Thresholds) -> Verdict {
    let th = thresholds;
    let Some(long) = fit(input.series, th.window_s) else {
        return Verdict::Unknown;
    };
    let recent = fit(input.series, th.recent_window_s).unwrap_or(long);
    if long.last == 0 || input.live_allocs == 0 {
        return Verdict::Churn;
    }
    let rising = |f: &Fit, min_r2: f64| {
        let rise = f.slope * f.span_s;
        f.slope > 0.0
            && f.r_squared >= min_r2
            && (rise >= th.min_growth_bytes as f64 || rise >= th.min_growth_frac * f.start)
    };
    let trending = rising(&long, th.growing_min_r2) || rising(&recent, th.growing_min_r2);

    let young = input
        .oldest_age_s
        .is_none_or(|age| age < th.churn_max_age_s);
    if young {
        return if trending {
            Verdict::Growing
        } else if input.total_allocs > input.live_allocs {
            Verdict::Churn
        } else {
            Verdict::Unknown
        };
    }

    let oldest = input.oldest_age_s.unwrap_or(0.0);
    let early_blocks_live = oldest >= th.leak_min_age_frac * long.span_s;
    let still_rising = recent.slope >= th.leak_min_recent_frac * long.slope;
    let mostly_old = input.ages.is_none_or(|ages| {
        let total = ages.total();
        total == 0
            || ages.count_at_least(th.leak_old_age_s) as f64 >= th.leak_min_old_frac * total as f64
    });
    if long.span_s >= th.leak_min_window_s
        && rising(&long, th.leak_min_r2)
        && early_blocks_live
        && still_rising
        && mostly_old
    {
        return Verdict::Leak;
    }
    let flat = recent.slope.abs() * S_PER_MIN <= th.steady_max_slope_frac * recent.mean;
    if flat {
        Verdict::Steady
    } else if trending {
        Verdict::Growing
    } else {
        Verdict::Steady
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series sampled once per second for `n` seconds, `f(t)` bytes at time `t`.
    fn series(n: u32, mut f: impl FnMut(f64) -> f64) -> Series {
        let mut s = Series::default();
        for t in 0..n {
            let t = f64::from(t);
            s.push(t, f(t).max(0.0).round() as u64);
        }
        s
    }

    /// Deterministic noise in `[-1, 1)` (xorshift64).
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    fn judge(series: &Series, live_allocs: u64, total_allocs: u64, oldest: Option<f64>) -> Verdict {
        let input = VerdictInput {
            series,
            live_allocs,
            total_allocs,
            oldest_age_s: oldest,
            ages: None,
        };
        verdict(&input, &Thresholds::default())
    }

    #[test]
    fn growth_fits_a_line_exactly() {
        // Given 1000 + 10 t bytes over two minutes
        let s = series(121, |t| 1000.0 + 10.0 * t);

        // When fitting the last minute
        let g = growth(&s, 60.0).expect("enough samples");

        // Then the slope is exact and the fit perfect
        assert!((g.bytes_per_s - 10.0).abs() < 1e-9, "{g:?}");
        assert!((g.bytes_per_h - 36_000.0).abs() < 1e-6, "{g:?}");
        assert!((g.r_squared - 1.0).abs() < 1e-12, "{g:?}");
        assert_eq!((g.window_s, g.samples), (60.0, 61));
    }

    #[test]
    fn growth_of_a_constant_is_zero_with_a_perfect_fit() {
        let g = growth(&series(10, |_| 4096.0), 600.0).expect("enough samples");
        assert_eq!((g.bytes_per_s, g.r_squared), (0.0, 1.0));
    }

    #[test]
    fn growth_needs_three_samples_at_distinct_times() {
        assert_eq!(growth(&Series::default(), 60.0), None);
        assert_eq!(growth(&series(2, |t| t), 60.0), None);
        assert_eq!(
            growth(&series(100, |t| t), 1.5),
            None,
            "two samples in 1.5 s"
        );
        assert!(growth(&series(3, |t| t), 60.0).is_some());
        let mut same_time = Series::default();
        for b in [1, 2, 3] {
            same_time.push(5.0, b);
        }
        assert_eq!(growth(&same_time, 60.0), None);
    }

    #[test]
    fn growth_of_noise_has_a_low_r_squared() {
        // Given noise of +-50 % around 1 MiB
        let mut rnd = noise(7);
        let s = series(600, |_| 1_048_576.0 * (1.0 + 0.5 * rnd()));

        // Then no line explains it
        let g = growth(&s, 600.0).expect("enough samples");
        assert!(g.r_squared < 0.05, "{g:?}");
    }

    #[test]
    fn age_buckets_follow_the_bounds() {
        let cases = [
            (-1.0, 0),
            (f64::NAN, 0),
            (0.0, 0),
            (0.999, 0),
            (1.0, 1),
            (9.9, 1),
            (10.0, 2),
            (59.0, 2),
            (60.0, 3),
            (599.0, 3),
            (600.0, 4),
            (3599.0, 4),
            (3600.0, 5),
            (21_599.0, 5),
            (21_600.0, 6),
            (f64::INFINITY, 6),
        ];
        for (age, bucket) in cases {
            assert_eq!(bucket_of(age), bucket, "age {age}");
        }
        assert_eq!(LABELS.len(), BOUNDS.len() + 1);
    }

    #[test]
    fn age_histogram_counts_and_serializes_in_bucket_order() {
        // Given ages across the buckets
        let mut h: AgeHistogram = [0.5, 0.2, 5.0, 30.0, 7200.0].into_iter().collect();
        h.add_n(86_400.0, 3);

        // Then
        assert_eq!(h.buckets, [2, 1, 1, 0, 0, 1, 3]);
        assert_eq!(h.total(), 8);
        assert_eq!(h.count_at_least(10.0), 5, "from <1m up");
        assert_eq!(h.count_at_least(5.0), 5, "5 s rounds up to the 10 s bound");
        assert_eq!(h.count_at_least(0.0), 8);
        assert_eq!(
            serde_json::to_string(&h).expect("serializes"),
            r#"{"<1s":2,"<10s":1,"<1m":1,"<10m":0,"<1h":0,"<6h":1,">=6h":3}"#
        );
    }

    #[test]
    fn verdicts_are_lowercase() {
        for (v, name) in [
            (Verdict::Leak, "leak"),
            (Verdict::Growing, "growing"),
            (Verdict::Steady, "steady"),
            (Verdict::Churn, "churn"),
            (Verdict::Unknown, "unknown"),
        ] {
            assert_eq!(v.to_string(), name);
            assert_eq!(
                serde_json::to_string(&v).expect("serializes"),
                format!("\"{name}\"")
            );
        }
    }

    #[test]
    fn a_steady_leak_is_a_leak() {
        // Given 2 KiB more every second for ten minutes, the first block still live
        let s = series(600, |t| 2048.0 * (t + 1.0));

        // Then
        assert_eq!(judge(&s, 600, 600, Some(599.0)), Verdict::Leak);
    }

    #[test]
    fn a_noisy_leak_is_a_leak() {
        // Given 1 KiB/s on top of 4 MiB of churn that varies by +-32 KiB
        let mut rnd = noise(42);
        let s = series(600, |t| 4_194_304.0 + 1024.0 * t + 32_768.0 * rnd());

        // Then
        assert_eq!(judge(&s, 5000, 90_000, Some(600.0)), Verdict::Leak);
    }

    #[test]
    fn a_rise_is_significant_from_64_kib_or_10_percent() {
        // Given 100 MiB held, plus 16 bytes a second (9.4 KiB in ten minutes: 0.01 %)
        let s = series(600, |t| 104_857_600.0 + 16.0 * t);

        // Then the rise is small but perfectly regular, and the old blocks stay
        // (10 % of the start is not reached and 64 KiB neither: not significant)
        assert_eq!(judge(&s, 1000, 1000, Some(600.0)), Verdict::Steady);

        // But 128 bytes a second (75 KiB) is
        let s = series(600, |t| 104_857_600.0 + 128.0 * t);
        assert_eq!(judge(&s, 1000, 1000, Some(600.0)), Verdict::Leak);
    }

    #[test]
    fn a_cache_that_filled_is_steady() {
        // Given a cache that filled to 8 MiB in a minute, then evicts as it inserts
        let s = series(600, |t| 8_388_608.0 * (t / 60.0).min(1.0));

        // Then its entries live about two minutes
        assert_eq!(judge(&s, 2048, 50_000, Some(130.0)), Verdict::Steady);
    }

    #[test]
    fn a_leak_that_stopped_is_steady() {
        // Given a stack that grew for three minutes, then held still for seven
        let s = series(600, |t| 1024.0 * t.min(180.0));

        // Then, although its first block is still live, it is not leaking now
        assert_eq!(judge(&s, 180, 180, Some(600.0)), Verdict::Steady);
    }

    #[test]
    fn a_leak_that_stopped_recently_is_not_a_leak() {
        // Given growth for almost eight minutes, then flat for the last two
        let s = series(600, |t| 1024.0 * t.min(470.0));

        // Then the long window alone would say leak, but the recent window vetoes it
        let long = growth(&s, 600.0).expect("fits");
        assert!(long.r_squared > 0.8, "{long:?}");
        assert_eq!(judge(&s, 470, 470, Some(600.0)), Verdict::Steady);
    }

    #[test]
    fn pure_churn_is_churn() {
        // Given a stack that holds a few random blocks, each for under a second
        let mut rnd = noise(3);
        let s = series(600, |_| 2048.0 + 2048.0 * rnd());

        // Then
        assert_eq!(judge(&s, 3, 1_000_000, Some(0.4)), Verdict::Churn);
    }

    #[test]
    fn nothing_live_is_churn() {
        let s = series(600, |t| if t < 599.0 { 4096.0 } else { 0.0 });
        assert_eq!(judge(&s, 0, 100, None), Verdict::Churn);
    }

    #[test]
    fn a_short_rising_series_is_growing() {
        // Given 20 seconds of steady growth
        let s = series(20, |t| 4096.0 * (t + 1.0));

        // Then there is not enough history for a leak
        assert_eq!(judge(&s, 20, 20, Some(19.0)), Verdict::Growing);
    }

    #[test]
    fn growth_of_young_blocks_is_growing() {
        // Given a backlog that grows while its blocks are consumed within a second
        let s = series(300, |t| 1024.0 * t);
        assert_eq!(judge(&s, 300, 90_000, Some(0.8)), Verdict::Growing);

        // Or whose old blocks die after half a minute
        assert_eq!(judge(&s, 300, 90_000, Some(30.0)), Verdict::Growing);
    }

    #[test]
    fn one_old_block_in_front_of_a_young_backlog_is_not_a_leak() {
        // Given steady growth where one block is old but nearly all are seconds old
        let s = series(600, |t| 1024.0 * (t + 1.0));
        let ages = AgeHistogram {
            buckets: [500, 99, 0, 0, 1, 0, 0],
        };
        let input = VerdictInput {
            series: &s,
            live_allocs: 600,
            total_allocs: 10_000,
            oldest_age_s: Some(600.0),
            ages: Some(&ages),
        };

        // Then
        assert_eq!(verdict(&input, &Thresholds::default()), Verdict::Growing);

        // While ages spread over the window agree with a leak
        let ages: AgeHistogram = (0..600).map(f64::from).collect();
        let input = VerdictInput {
            ages: Some(&ages),
            ..input
        };
        assert_eq!(verdict(&input, &Thresholds::default()), Verdict::Leak);
    }

    #[test]
    fn a_noisy_trend_is_growing() {
        // Given growth with noise strong enough to bring R² between 0.5 and 0.8
        let mut rnd = noise(11);
        let s = series(600, |t| 1_048_576.0 + 512.0 * t + 90_000.0 * rnd());
        let r2 = growth(&s, 600.0).expect("fits").r_squared;
        assert!((0.5..0.8).contains(&r2), "r² {r2}");

        // Then
        assert_eq!(judge(&s, 1000, 1000, Some(600.0)), Verdict::Growing);
    }

    #[test]
    fn noise_around_a_level_is_steady() {
        // Given +-10 % noise around 1 MiB, blocks living minutes
        let mut rnd = noise(5);
        let s = series(600, |_| 1_048_576.0 * (1.0 + 0.1 * rnd()));

        // Then
        assert_eq!(judge(&s, 256, 10_000, Some(240.0)), Verdict::Steady);
    }

    #[test]
    fn shrinking_is_steady() {
        let s = series(600, |t| 1_048_576.0 - 1024.0 * t);
        assert_eq!(judge(&s, 100, 1000, Some(600.0)), Verdict::Steady);
    }

    #[test]
    fn too_few_samples_is_unknown() {
        let s = series(2, |t| t * 4096.0);
        assert_eq!(judge(&s, 2, 2, Some(1.0)), Verdict::Unknown);
    }

    #[test]
    fn a_new_stack_that_never_freed_is_unknown() {
        // Given one block allocated 3 s ago and never freed
        let s = series(3, |_| 64.0);

        // Then it is neither churn nor growth
        assert_eq!(judge(&s, 1, 1, Some(3.0)), Verdict::Unknown);
    }
}
