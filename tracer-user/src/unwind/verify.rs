//! `--verify-unwind`: checking the kernel's unwind against a user-space one.
//!
//! For a sample of events the eBPF side sends the registers at the return probe, the frames it
//! unwound and a copy of the stack above rsp. User space unwinds the same registers over the same
//! memory with the reference unwinder ([`crate::unwind::unwind`]) and the same tables, and
//! compares frame for frame.
use tracer_common::{MAX_FRAMES, VerifyRecord};

use crate::unwind::{self, Registers, StopReason};

/// How one sampled stack compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Both unwinds agree on every frame.
    Equal,
    /// The copied stack ended before the reference could finish; the frames it did unwind agree
    /// with the kernel's.
    PrefixEqual,
    /// They differ: the frames of each.
    Mismatch {
        /// The kernel's frames.
        kernel: Vec<u64>,
        /// The reference unwinder's frames.
        reference: Vec<u64>,
        /// Why the reference stopped.
        stop: String,
    },
}

/// Running totals of the checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyCounts {
    /// Stacks found equal.
    pub equal: u64,
    /// Stacks whose verifiable prefix was equal.
    pub prefix_equal: u64,
    /// Stacks that differed.
    pub mismatched: u64,
}

impl VerifyCounts {
    /// Adds one result.
    pub fn add(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Equal => self.equal += 1,
            Verdict::PrefixEqual => self.prefix_equal += 1,
            Verdict::Mismatch { .. } => self.mismatched += 1,
        }
    }
}

/// Decodes a ring-buffer record; `None` for a record of the wrong size.
pub fn decode(bytes: &[u8]) -> Option<Box<VerifyRecord>> {
    if bytes.len() != size_of::<VerifyRecord>() {
        return None;
    }
    // SAFETY: the length matches `VerifyRecord`, a `#[repr(C)]` type of plain integers and byte
    // arrays for which every byte pattern is valid; `read_unaligned` makes no alignment
    // assumption. Boxed: the record is 17 KiB.
    Some(Box::new(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast())
    }))
}

/// Unwinds `record`'s registers over its copied stack through `mappings` and compares.
pub fn check(record: &VerifyRecord, mappings: &[unwind::Mapping<'_>]) -> Verdict {
    let copied = u64::from(record.copied).min(record.stack.len() as u64);
    let base = record.rsp;
    let read = |addr: u64| -> Option<u64> {
        let offset = addr.checked_sub(base)?;
        if offset.checked_add(8)? > copied {
            return None;
        }
        let start = usize::try_from(offset).ok()?;
        let bytes: [u8; 8] = record.stack.get(start..start + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    };
    let regs = Registers {
        rip: record.rip,
        rsp: record.rsp,
        rbp: record.rbp,
    };
    let reference = unwind::unwind(mappings, regs, read, MAX_FRAMES);
    let len = (record.len as usize).min(MAX_FRAMES);
    let kernel = &record.ips[..len];
    compare(kernel, &reference.frames, reference.stop)
}

/// Compares the kernel's frames with the reference's, given why the reference stopped.
pub fn compare(kernel: &[u64], reference: &[u64], stop: StopReason) -> Verdict {
    let mismatch = || Verdict::Mismatch {
        kernel: kernel.to_vec(),
        reference: reference.to_vec(),
        stop: format!("{stop:?}"),
    };
    match stop {
        _ if stop.is_complete() => {
            if kernel == reference {
                Verdict::Equal
            } else {
                mismatch()
            }
        }
        // The kernel flags a stack as cut at exactly MAX_FRAMES frames; the reference only when
        // more exist: the frames both have must agree.
        StopReason::Depth => {
            if kernel.len() == MAX_FRAMES && kernel == reference {
                Verdict::Equal
            } else {
                mismatch()
            }
        }
        // The reference ran off the copied stack: what it unwound must be where the kernel's
        // walk went too.
        StopReason::ReadFailed => {
            if reference.len() <= kernel.len() && kernel[..reference.len()] == *reference {
                Verdict::PrefixEqual
            } else {
                mismatch()
            }
        }
        _ => {
            if kernel == reference {
                Verdict::Equal
            } else {
                mismatch()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_stacks_must_match_exactly() {
        assert_eq!(
            compare(&[1, 2, 3], &[1, 2, 3], StopReason::End),
            Verdict::Equal
        );
        assert!(matches!(
            compare(&[1, 2, 3], &[1, 2], StopReason::End),
            Verdict::Mismatch { .. }
        ));
        assert!(matches!(
            compare(&[1, 9, 3], &[1, 2, 3], StopReason::NullFrame),
            Verdict::Mismatch { .. }
        ));
    }

    #[test]
    fn a_reference_cut_by_the_copy_checks_its_prefix() {
        assert_eq!(
            compare(&[1, 2, 3, 4], &[1, 2], StopReason::ReadFailed),
            Verdict::PrefixEqual
        );
        assert!(matches!(
            compare(&[1, 5, 3], &[1, 2], StopReason::ReadFailed),
            Verdict::Mismatch { .. }
        ));
        assert!(matches!(
            compare(&[1], &[1, 2], StopReason::ReadFailed),
            Verdict::Mismatch { .. }
        ));
    }

    #[test]
    fn depth_limited_stacks_compare_their_frames() {
        let frames: Vec<u64> = (0..MAX_FRAMES as u64).collect();
        assert_eq!(compare(&frames, &frames, StopReason::Depth), Verdict::Equal);
        assert!(matches!(
            compare(&frames[..5], &frames[..5], StopReason::Depth),
            Verdict::Mismatch { .. }
        ));
    }

    #[test]
    fn counts_add_up() {
        let mut counts = VerifyCounts::default();
        counts.add(&Verdict::Equal);
        counts.add(&Verdict::PrefixEqual);
        counts.add(&compare(&[1], &[2], StopReason::End));
        assert_eq!(
            counts,
            VerifyCounts {
                equal: 1,
                prefix_equal: 1,
                mismatched: 1
            }
        );
    }

    #[test]
    fn decode_rejects_short_records() {
        assert!(decode(&[0u8; 16]).is_none());
    }
}
