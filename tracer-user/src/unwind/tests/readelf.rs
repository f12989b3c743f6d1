//! Parsing `readelf --debug-dump=frames-interp` and checking a table against it, row by row.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
    process::Command,
};

use crate::unwind::{
    UnwindRow, UnwindTable,
    row::{
        CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, CFA_UNSUPPORTED, RBP_AT_CFA,
        RBP_UNSUPPORTED,
    },
};

/// One row of readelf's table: the LOC and the CFA, rbp and ra columns (`None` when the column
/// is absent, i.e. no rule).
#[derive(Clone, Debug)]
pub(super) struct ReadelfRow {
    pub pc: u64,
    pub cfa: String,
    pub rbp: Option<String>,
    pub ra: Option<String>,
}

/// One FDE as readelf interprets it. When readelf printed no table for it (the FDE adds nothing
/// to its CIE's initial rules), `rows` holds the CIE's initial row at the FDE's start.
#[derive(Clone, Debug)]
pub(super) struct ReadelfFde {
    pub start: u64,
    pub end: u64,
    pub signal: bool,
    pub rows: Vec<ReadelfRow>,
}

/// Runs `readelf --debug-dump=frames-interp` on `path` (`.eh_frame` only: the fixtures have no
/// `.debug_frame`).
pub(super) fn readelf_fdes(path: &Path) -> Vec<ReadelfFde> {
    let output = Command::new("readelf")
        .arg("--debug-dump=frames-interp")
        .arg(path)
        .output()
        .expect("run readelf (binutils)");
    // readelf exits with 1 on Debian's libc without saying why (the separate debug file named by
    // .gnu_debuglink is missing); the frame dump is complete all the same.
    assert!(
        !output.stdout.is_empty(),
        "readelf printed nothing for {path:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// Whitespace-separated fields, with a register rule's name in parentheses kept with it
/// ("r9 (r9)" is one field).
fn split_fields(line: &str) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for token in line.split_whitespace() {
        match fields.last_mut() {
            Some(last) if token.starts_with('(') => {
                last.push(' ');
                last.push_str(token);
            }
            _ => fields.push(token.to_owned()),
        }
    }
    fields
}

fn parse(text: &str) -> Vec<ReadelfFde> {
    struct Cie {
        signal: bool,
        rows: Vec<ReadelfRow>,
    }
    let mut cies: HashMap<String, Cie> = HashMap::new();
    let mut fdes = Vec::new();
    // The entry being read: (CIE offset, CIE) or an FDE (with its CIE offset).
    enum Current {
        None,
        Cie(String),
        Fde(usize),
    }
    let mut current = Current::None;
    let mut columns: Vec<String> = Vec::new();
    for line in text.lines() {
        let fields = split_fields(line);
        if fields.len() >= 4 && fields[3] == "CIE" {
            let offset = fields[0].to_owned();
            let signal = fields
                .get(4)
                .is_some_and(|aug| aug.trim_matches('"').contains('S'));
            cies.insert(
                offset.clone(),
                Cie {
                    signal,
                    rows: Vec::new(),
                },
            );
            current = Current::Cie(offset);
            continue;
        }
        if fields.len() >= 6 && fields[3] == "FDE" {
            let range = fields[5].trim_start_matches("pc=");
            let (start, end) = range.split_once("..").expect("pc range");
            fdes.push(ReadelfFde {
                start: u64::from_str_radix(start, 16).expect("start"),
                end: u64::from_str_radix(end, 16).expect("end"),
                signal: false,
                rows: Vec::new(),
            });
            current = Current::Fde(fdes.len() - 1);
            continue;
        }
        if fields.first().map(String::as_str) == Some("LOC") {
            columns = fields.clone();
            continue;
        }
        // Table rows start with a 16-digit LOC ("00000164 ZERO terminator" does not).
        if fields.is_empty() || fields.len() != columns.len() || fields[0].len() != 16 {
            continue;
        }
        let Ok(pc) = u64::from_str_radix(&fields[0], 16) else {
            continue;
        };
        let column = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .map(|i| fields[i].clone())
        };
        let row = ReadelfRow {
            pc,
            cfa: column("CFA").expect("CFA column"),
            rbp: column("rbp"),
            ra: column("ra"),
        };
        match &current {
            Current::Cie(offset) => cies.get_mut(offset).expect("cie").rows.push(row),
            Current::Fde(index) => fdes[*index].rows.push(row),
            Current::None => {}
        }
    }
    // Fill in what comes from the CIEs (a second pass: a CIE may follow its FDEs).
    let mut index = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 6 && fields[3] == "FDE" {
            let cie = cies
                .get(fields[4].trim_start_matches("cie="))
                .expect("FDE's CIE");
            let fde = &mut fdes[index];
            fde.signal = cie.signal;
            if fde.rows.is_empty() {
                fde.rows = cie
                    .rows
                    .iter()
                    .map(|r| ReadelfRow {
                        pc: fde.start,
                        ..r.clone()
                    })
                    .collect();
            }
            index += 1;
        }
    }
    fdes
}

/// What a table row may be for a readelf row.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Exactly this rule.
    Rule(UnwindRow),
    /// This CFA type, whatever the offsets.
    Kind(u8),
}

impl Expect {
    fn accepts(self, row: &UnwindRow) -> bool {
        match self {
            Self::Rule(rule) => rule.same_rule(row),
            Self::Kind(cfa_type) => row.cfa_type == cfa_type,
        }
    }
}

/// The table rows acceptable for a readelf row.
fn expected(fde: &ReadelfFde, row: &ReadelfRow) -> Vec<Expect> {
    use Expect::{Kind, Rule};
    if fde.signal {
        return vec![Kind(CFA_SIGNAL)];
    }
    match row.ra.as_deref() {
        Some("u") => return vec![Kind(CFA_END)],
        Some("c-8") => {}
        _ => return vec![Kind(CFA_UNSUPPORTED)],
    }
    if row.cfa == "exp" {
        // The PLT expression (the tests check its threshold) or another one.
        return vec![Kind(CFA_UNSUPPORTED), Kind(CFA_PLT)];
    }
    let (cfa_type, offset) = if let Some(offset) = row.cfa.strip_prefix("rsp+") {
        (CFA_RSP, offset)
    } else if let Some(offset) = row.cfa.strip_prefix("rbp+") {
        (CFA_RBP, offset)
    } else {
        return vec![Kind(CFA_UNSUPPORTED)];
    };
    let Ok(cfa_offset) = offset.parse::<i32>() else {
        return vec![Kind(CFA_UNSUPPORTED)];
    };
    let base = UnwindRow {
        cfa_offset,
        cfa_type,
        ..UnwindRow::default()
    };
    let rbp_unsupported = UnwindRow {
        rbp_type: RBP_UNSUPPORTED,
        ..base
    };
    match row.rbp.as_deref() {
        None | Some("s") => vec![Rule(base)],
        // readelf prints "u" both for "no rule yet" and for DW_CFA_undefined.
        Some("u") => vec![Rule(base), Rule(rbp_unsupported)],
        Some(rule) => match rule.strip_prefix('c').map(str::parse::<i16>) {
            Some(Ok(offset)) => vec![Rule(UnwindRow {
                rbp_offset: offset,
                rbp_type: RBP_AT_CFA,
                ..base
            })],
            _ => vec![Rule(rbp_unsupported)],
        },
    }
}

/// Checks every readelf row of every non-empty FDE against `table`: the row applying at its LOC,
/// and every table row up to the next LOC, must carry an acceptable rule. Returns the number of
/// readelf rows checked; panics with the first mismatches.
pub(super) fn check_table(table: &UnwindTable, fdes: &[ReadelfFde]) -> usize {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    let starts: HashSet<u64> = fdes
        .iter()
        .filter(|f| f.start < f.end)
        .map(|f| f.start)
        .collect();
    for fde in fdes.iter().filter(|f| f.start < f.end) {
        for (i, row) in fde.rows.iter().enumerate() {
            if fde.signal && i > 0 {
                break;
            }
            let end = if fde.signal {
                fde.end
            } else {
                fde.rows.get(i + 1).map_or(fde.end, |next| next.pc)
            };
            let acceptable = expected(fde, row);
            let first = table.rows.partition_point(|r| u64::from(r.pc) <= row.pc);
            let applying = first.checked_sub(1).map(|i| &table.rows[i]);
            let inside = table
                .rows
                .iter()
                .skip(first)
                .take_while(|r| u64::from(r.pc) < end);
            for actual in applying.into_iter().chain(inside) {
                if !acceptable.iter().any(|e| e.accepts(actual)) {
                    mismatches.push(format!(
                        "FDE {:#x}..{:#x} LOC {:#x} {:?}: expected one of {acceptable:?}, got {actual:?}",
                        fde.start, fde.end, row.pc, row
                    ));
                }
            }
            checked += 1;
        }
        // Past the FDE's end: the next FDE, or a NONE marker.
        if !starts.contains(&fde.end) {
            let after = table.lookup(fde.end).copied();
            if after.is_none_or(|r| u64::from(r.pc) != fde.end || r.cfa_type != CFA_NONE) {
                mismatches.push(format!(
                    "FDE {:#x}..{:#x}: no NONE marker at its end, got {after:?}",
                    fde.start, fde.end
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
    checked
}
