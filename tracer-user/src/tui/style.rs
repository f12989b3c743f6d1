//! How the live view's text looks: labels fade, values stand out, verdicts by severity.
use std::borrow::Cow;

use ratatui::{style::Style, text::Span};

use crate::report::analytics::Verdict;

/// Text that names a value.
pub(crate) fn label<'a>(text: impl Into<Cow<'a, str>>) -> Span<'a> {
    Span::styled(text, Style::new().dark_gray())
}

/// A value.
pub(crate) fn value(text: String) -> Span<'static> {
    Span::styled(text, Style::new().bold())
}

/// How a verdict is drawn: a leak stands out, what is not a concern fades.
pub(crate) fn verdict_style(verdict: Verdict) -> Style {
    match verdict {
        Verdict::Leak => Style::new().red().bold(),
        Verdict::Growing => Style::new().yellow(),
        Verdict::Steady => Style::new(),
        Verdict::Churn | Verdict::Unknown => Style::new().dark_gray(),
    }
}
