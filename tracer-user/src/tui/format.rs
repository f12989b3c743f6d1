//! Text for the live view's cells: ages, signed byte counts, growth rates, sparklines, verdicts,
//! age histograms and frame labels. Pure functions, no styling.

use std::borrow::Cow;

use crate::{
    export::{human_bytes, one_line},
    report::analytics::{AgeHistogram, LABELS, Verdict},
    report::{Frame, StackReport},
};

/// Seconds per hour, to turn a growth in bytes per second into bytes per hour.
pub(crate) const SECONDS_PER_HOUR: f64 = 3600.0;

/// Bars of a sparkline, lowest first; a sample of 0 bytes is a space.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A duration for people: `3.2s`, `5m12s`, `2h03m`, `4d07h`; `?` when not a valid duration.
pub(crate) fn age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_owned();
    }
    let tenths = (seconds * 10.0).round();
    if tenths < 600.0 {
        return format!("{:.1}s", tenths / 10.0);
    }
    // Whole seconds from here on (saturating beyond u64, which no one waits for).
    let secs = seconds.round() as u64;
    let (days, hours, minutes, secs) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else {
        format!("{minutes}m{secs:02}s")
    }
}

/// A count difference with its sign: `+3`, `-2`, `0`.
pub(crate) fn signed_count(delta: i128) -> String {
    if delta > 0 {
        format!("+{delta}")
    } else {
        delta.to_string()
    }
}

/// A rate in bytes per `unit` (`s`, `h`) with its sign: `+1.2 KiB/s`, `-40 B/h`, `0 B/s`.
pub(crate) fn rate(bytes_per_unit: f64, unit: &str) -> String {
    if !bytes_per_unit.is_finite() {
        return "?".to_owned();
    }
    // Saturating float-to-int conversion; sub-byte rates round to 0.
    let magnitude = bytes_per_unit.abs().round() as u64;
    let sign = match magnitude {
        0 => "",
        _ if bytes_per_unit < 0.0 => "-",
        _ => "+",
    };
    format!("{sign}{}/{unit}", human_bytes(magnitude))
}

/// The growth column: `+1.2 KiB/s +4.3 MiB/h` when `wide`, else only the hourly rate; `—` when
/// the growth is not known yet (fewer than two samples).
pub(crate) fn growth(bytes_per_s: Option<f64>, wide: bool) -> String {
    match bytes_per_s {
        None => "—".to_owned(),
        Some(g) if wide => format!("{} {}", rate(g, "s"), rate(g * SECONDS_PER_HOUR, "h")),
        Some(g) => rate(g * SECONDS_PER_HOUR, "h"),
    }
}

/// The last `width` values as unicode bars scaled from 0 to their maximum, newest at the right,
/// padded with spaces on the left when there are fewer samples than `width`. A zero value is a
/// space, anything above zero at least `▁`.
pub(crate) fn sparkline(values: &[u64], width: usize) -> String {
    let values = &values[values.len().saturating_sub(width)..];
    let max = values.iter().copied().max().unwrap_or(0);
    let mut line: String = " ".repeat(width - values.len());
    for &v in values {
        if v == 0 || max == 0 {
            line.push(' ');
        } else {
            // 1..=8 in exact integer arithmetic: ceil(v * 8 / max).
            let level = (u128::from(v) * 8).div_ceil(u128::from(max));
            let index = usize::try_from(level.clamp(1, 8) - 1).unwrap_or(7);
            line.push(BARS[index]);
        }
    }
    line
}

/// The verdict column: the verdict's name, `?` when unknown.
pub(crate) const fn verdict_cell(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Unknown => "?",
        known => known.as_str(),
    }
}

/// The fitted growth of the detail pane: `+1.2 KiB/s, R² 0.98`, without the R² when it is not
/// known; `None` without a fit.
pub(crate) fn fitted_growth(bytes_per_s: Option<f64>, r2: Option<f64>) -> Option<String> {
    let rate = rate(bytes_per_s?, "s");
    Some(match r2 {
        Some(r2) if r2.is_finite() => format!("{rate}, R² {r2:.2}"),
        _ => rate,
    })
}

/// The non-empty buckets of an age histogram: `ages <1s:3 <1m:12 >=6h:1`; `None` when every
/// bucket is empty.
pub(crate) fn age_buckets(ages: &AgeHistogram) -> Option<String> {
    let buckets: Vec<String> = LABELS
        .iter()
        .zip(ages.buckets)
        .filter(|&(_, count)| count > 0)
        .map(|(label, count)| format!("{label}:{count}"))
        .collect();
    (!buckets.is_empty()).then(|| format!("ages {}", buckets.join(" ")))
}

/// A count with its thousands separated: `4,096`, `100,000`.
pub(crate) fn thousands(count: usize) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `1 alloc`, `2 allocs`.
pub(crate) fn allocs(count: u64) -> String {
    if count == 1 {
        "1 alloc".to_owned()
    } else {
        format!("{count} allocs")
    }
}

/// `text` cut to `width` characters, ending in `…` when cut.
pub(crate) fn ellipsize(text: &str, width: usize) -> Cow<'_, str> {
    if text.chars().count() <= width {
        return Cow::Borrowed(text);
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        cut.push('…');
    }
    Cow::Owned(cut)
}

/// `file:line` with only the file's last path component (`leaky.c:52`), `None` without a file.
pub(crate) fn short_location(frame: &Frame) -> Option<String> {
    let file = frame.file.as_deref()?;
    let name = one_line(file.rsplit('/').next().unwrap_or(file)).into_owned();
    Some(match frame.line {
        Some(line) => format!("{name}:{line}"),
        None => name,
    })
}

/// One line of the detail pane: `#n function (module) file:line [inlined]`, or
/// `#n [module] 0xaddr` for a frame without a name.
pub(crate) fn frame_line(index: usize, frame: &Frame) -> String {
    format!("#{index} {}", crate::export::text::frame_line(frame))
}

/// What a stack row says about where the memory comes from: the allocator's caller, the
/// function that called it, and the allocating call's location:
/// `alloc_buffer ← parse_header (leaky.c:52)`. The location is the first frame's, else the
/// second's, and left out when neither has one.
pub(crate) fn stack_description(stack: &StackReport) -> String {
    let mut frames = stack.frames.iter();
    let Some(first) = frames.next() else {
        return "(no stack recorded)".to_owned();
    };
    let second = frames.next();
    let mut text = first.label();
    if let Some(second) = second {
        text.push_str(" ← ");
        text.push_str(&second.label());
    }
    if let Some(location) = short_location(first).or_else(|| second.and_then(|f| short_location(f)))
    {
        text.push_str(&format!(" ({location})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(function: &str, module: &str, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            function: Some(function.to_owned()),
            module: Some(module.to_owned()),
            file: file.map(str::to_owned),
            line,
            addr: 0x1000,
            offset: None,
            build_id: None,
            inlined: false,
        }
    }

    #[test]
    fn counts_have_their_thousands_separated() {
        let shown: Vec<String> = [0, 7, 999, 1000, 4096, 100_000, 1_048_576]
            .into_iter()
            .map(thousands)
            .collect();
        assert_eq!(
            shown,
            ["0", "7", "999", "1,000", "4,096", "100,000", "1,048,576"]
        );
    }

    #[test]
    fn ages_pick_the_largest_useful_units() {
        let cases = [
            (0.0, "0.0s"),
            (3.24, "3.2s"),
            (59.94, "59.9s"),
            (59.96, "1m00s"),
            (312.0, "5m12s"),
            (3599.0, "59m59s"),
            (7380.0, "2h03m"),
            (86_399.0, "23h59m"),
            (86_400.0 * 4.0 + 3600.0 * 7.0, "4d07h"),
            (-1.0, "?"),
            (f64::NAN, "?"),
        ];
        for (seconds, want) in cases {
            assert_eq!(age(seconds), want, "{seconds} s");
        }
    }

    #[test]
    fn signed_values_show_their_sign() {
        assert_eq!(signed_count(3), "+3");
        assert_eq!(signed_count(-2), "-2");
        assert_eq!(signed_count(0), "0");
    }

    #[test]
    fn growth_shows_per_second_and_per_hour() {
        assert_eq!(growth(Some(1228.8), true), "+1.2 KiB/s +4.2 MiB/h");
        assert_eq!(growth(Some(1228.8), false), "+4.2 MiB/h");
        assert_eq!(growth(Some(-50.0), true), "-50 B/s -175.8 KiB/h");
        assert_eq!(growth(Some(0.0), true), "0 B/s 0 B/h");
        assert_eq!(growth(Some(0.2), true), "0 B/s +720 B/h");
        assert_eq!(growth(None, true), "—");
        assert_eq!(rate(f64::INFINITY, "s"), "?");
    }

    #[test]
    fn sparklines_scale_from_zero_and_pad_on_the_left() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8], 5), " ▁▂▄█");
        assert_eq!(sparkline(&[8, 8], 4), "  ██");
        assert_eq!(sparkline(&[1, 2, 3, 100], 2), "▁█");
        assert_eq!(sparkline(&[0, 0], 3), "   ");
        assert_eq!(sparkline(&[], 3), "   ");
        assert_eq!(sparkline(&[5], 0), "");
        assert_eq!(sparkline(&[1, u64::MAX], 2), "▁█");
    }

    #[test]
    fn verdicts_growth_fits_and_age_buckets() {
        assert_eq!(verdict_cell(Verdict::Leak), "leak");
        assert_eq!(verdict_cell(Verdict::Growing), "growing");
        assert_eq!(verdict_cell(Verdict::Steady), "steady");
        assert_eq!(verdict_cell(Verdict::Churn), "churn");
        assert_eq!(verdict_cell(Verdict::Unknown), "?");

        assert_eq!(
            fitted_growth(Some(1228.8), Some(0.981)).as_deref(),
            Some("+1.2 KiB/s, R² 0.98")
        );
        assert_eq!(fitted_growth(Some(-50.0), None).as_deref(), Some("-50 B/s"));
        assert_eq!(fitted_growth(None, Some(0.5)), None);

        let mut ages = AgeHistogram::default();
        assert_eq!(age_buckets(&ages), None);
        ages.add_n(0.2, 3);
        ages.add_n(30.0, 12);
        ages.add(30_000.0);
        assert_eq!(
            age_buckets(&ages).as_deref(),
            Some("ages <1s:3 <1m:12 >=6h:1")
        );
    }

    #[test]
    fn counts_and_cut_text() {
        assert_eq!(allocs(0), "0 allocs");
        assert_eq!(allocs(1), "1 alloc");
        assert_eq!(allocs(2), "2 allocs");
        assert_eq!(ellipsize("abc", 3), "abc");
        assert_eq!(ellipsize("abcd", 3), "ab…");
        assert_eq!(ellipsize("a ← b", 4), "a ←…");
        assert_eq!(ellipsize("abc", 1), "…");
        assert_eq!(ellipsize("abc", 0), "");
    }

    #[test]
    fn frame_lines_match_the_text_report() {
        let mut frame = named(
            "grow_buffer",
            "/usr/bin/server",
            Some("src/buffer.c"),
            Some(42),
        );
        frame.inlined = true;
        assert_eq!(
            frame_line(0, &frame),
            "#0 grow_buffer (server) src/buffer.c:42 [inlined]"
        );
        let unknown = Frame {
            module: Some("/usr/lib/libfoo.so.1".to_owned()),
            ..Frame::unknown(0x7f3a_0000_1234)
        };
        assert_eq!(frame_line(1, &unknown), "#1 [libfoo.so.1] 0x7f3a00001234");
        let no_line = named("f", "m", Some("a.c"), None);
        assert_eq!(frame_line(2, &no_line), "#2 f (m) a.c");
    }

    #[test]
    fn descriptions_name_the_caller_its_caller_and_the_allocation_site() {
        let stack = |frames: Vec<Frame>| StackReport {
            id: 1,
            frames: crate::report::shared(frames),
            ..StackReport::default()
        };
        let alloc = named("alloc_buffer", "leaky", Some("/src/leaky.c"), Some(52));
        let parse = named("parse_header", "leaky", Some("/src/leaky.c"), Some(80));
        assert_eq!(
            stack_description(&stack(vec![alloc.clone(), parse.clone()])),
            "alloc_buffer ← parse_header (leaky.c:52)"
        );
        let bare = named("alloc_buffer", "leaky", None, None);
        assert_eq!(
            stack_description(&stack(vec![bare.clone(), parse])),
            "alloc_buffer ← parse_header (leaky.c:80)"
        );
        assert_eq!(stack_description(&stack(vec![bare])), "alloc_buffer");
        assert_eq!(stack_description(&stack(vec![])), "(no stack recorded)");
    }
}
