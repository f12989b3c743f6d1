//! Golden-file checks for the exporters' tests: output compared with a file under
//! `tests/golden/`, rewritten from the output when `LEAKTRACE_BLESS=1`.
use std::{fs, path::PathBuf};

/// Set to `1` to rewrite the golden files from the current output.
const BLESS_ENV: &str = "LEAKTRACE_BLESS";

/// Fails, naming the first line that differs, unless `actual` is the content of golden file
/// `file`.
pub(crate) fn check(file: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os(BLESS_ENV).is_some_and(|v| v == "1") {
        fs::write(&path, actual).expect("writing the golden file");
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}; run with {BLESS_ENV}=1 to create it",
            path.display()
        )
    });
    if let Some((n, (want, got))) = expected
        .split_inclusive('\n')
        .zip(actual.split_inclusive('\n'))
        .enumerate()
        .find(|(_, (want, got))| want != got)
    {
        panic!(
            "{}:{}: output differs\n want: {want:?}\n  got: {got:?}\n\
             run with {BLESS_ENV}=1 to accept the new output",
            path.display(),
            n + 1
        );
    }
    assert!(
        expected == actual,
        "{}: output has {} bytes, golden file {} (run with {BLESS_ENV}=1 to accept)",
        path.display(),
        actual.len(),
        expected.len()
    );
}
