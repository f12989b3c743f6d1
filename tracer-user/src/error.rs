//! What the user sees when leaktrace cannot do its job: one line, a hint, an exit code.
use std::fmt;

/// Exit code for bad input: arguments, target, privileges, paths.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a failure at run time (the kernel refused the programs, I/O failed).
pub const EXIT_FAILURE: u8 = 1;

/// A failure reported to the user as `leaktrace: MESSAGE (hint: HINT)`.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong, one line.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// The process exit code.
    pub code: u8,
}

impl Failure {
    /// Bad input (exit code 2).
    pub fn usage(message: impl fmt::Display, hint: impl Into<String>) -> Self {
        Self {
            message: message.to_string(),
            hint: Some(hint.into()),
            code: EXIT_USAGE,
        }
    }

    /// A run-time failure (exit code 1).
    pub fn runtime(message: impl fmt::Display, hint: Option<String>) -> Self {
        Self {
            message: message.to_string(),
            hint,
            code: EXIT_FAILURE,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line: flatten any newline a library put into its message.
        let message = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        write!(f, "leaktrace: {message}")?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Renders an error and its sources as one line: `outer: inner: innermost`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_line_with_hint() {
        let failure = Failure::usage("no process with pid 7\nreally", "check the pid with `ps`");
        assert_eq!(
            failure.to_string(),
            "leaktrace: no process with pid 7 really (hint: check the pid with `ps`)"
        );
        assert_eq!(failure.code, EXIT_USAGE);
    }

    #[test]
    fn chains_sources_without_repeating_them() {
        let inner = std::io::Error::other("disk on fire");
        let outer = crate::target::launch::LaunchError::Os {
            what: "exec",
            source: inner,
        };
        assert_eq!(chain(&outer), "exec: disk on fire");
    }
}
