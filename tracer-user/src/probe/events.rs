//! Decoding the kernel's event records at the edge, into the heap model's events.
use tracer_common::{AllocKind, Event, EventOp, FreeEvent};

use crate::source::{HeapEvent, Op};

/// A kernel event, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The event; its stack is the kernel stack map's id.
    pub event: HeapEvent,
    /// Which allocator made the call (the label index user space put in the attach cookie).
    pub allocator: u8,
}

/// Decodes the records of one ring buffer, in the buffer's order: it keeps the newest time of
/// the records read so far, which a [`FreeEvent`] (sent without one) takes.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    newest_ts_ns: u64,
}

impl Decoder {
    /// A decoder for a buffer whose programs were attached after `start_ns` (the events' clock):
    /// the time a free takes if it comes first.
    pub fn new(start_ns: u64) -> Self {
        Self {
            newest_ts_ns: start_ns,
        }
    }

    /// Decodes one record; `None` for a record of neither size or with unknown codes.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Decoded> {
        if bytes.len() == size_of::<FreeEvent>() {
            // SAFETY: the length matches `FreeEvent`, a `#[repr(C)]` plain-integer type for
            // which every byte pattern is valid; `read_unaligned` makes no alignment assumption.
            let free: FreeEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            // No record before it in the buffer was stamped after it was sent, and nothing it
            // makes possible was stamped before (see `FreeEvent`).
            return Some(Decoded {
                event: HeapEvent::free(self.newest_ts_ns, free.addr),
                allocator: 0,
            });
        }
        if bytes.len() != size_of::<Event>() {
            return None;
        }
        // SAFETY: the length matches `Event`, a `#[repr(C)]` plain-integer type for which every
        // byte pattern is valid; `read_unaligned` makes no alignment assumption.
        let event: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        self.newest_ts_ns = self.newest_ts_ns.max(event.ts_ns);
        from_event(&event)
    }
}

/// Converts a kernel event into a heap-model event and its allocator.
pub fn from_event(event: &Event) -> Option<Decoded> {
    let mut stack = event.stack_id;
    let op = match event.op {
        op if op == EventOp::Alloc as u8 => Op::Alloc,
        op if op == EventOp::Free as u8 => Op::Free,
        op if op == EventOp::Exec as u8 => Op::Exec,
        op if op == EventOp::Map as u8 => Op::Map,
        op if op == EventOp::Unmap as u8 => Op::Unmap,
        op if op == EventOp::Remap as u8 => {
            // The old length travels in the stack id's place (see `EventOp::Remap`).
            stack = crate::source::NO_STACK;
            Op::Remap {
                old_len: event.stack_id,
            }
        }
        _ => return None,
    };
    Some(Decoded {
        event: HeapEvent {
            ts_ns: event.ts_ns,
            op,
            addr: event.addr,
            old_addr: event.old_addr,
            size: event.size,
            stack,
            tid: event.tid,
            kind: AllocKind::from_raw(u16::from(event.kind))?,
        },
        allocator: event.allocator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::monotonic_now_ns;

    fn decode(bytes: &[u8]) -> Option<Decoded> {
        Decoder::new(0).decode(bytes)
    }

    fn bytes_of(event: &Event) -> Vec<u8> {
        // SAFETY: `Event` is plain integers with no padding; viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts((event as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_allocations_and_frees() {
        let event = Event {
            ts_ns: 5,
            addr: 0x1000,
            old_addr: 0x2000,
            size: 64,
            stack_id: 9,
            tid: 3,
            kind: AllocKind::Realloc as u8,
            op: EventOp::Alloc as u8,
            flags: 0,
            allocator: 2,
        };
        let Decoded {
            event: decoded,
            allocator,
        } = decode(&bytes_of(&event)).expect("decodes");
        assert_eq!(allocator, 2);
        assert_eq!(
            (
                decoded.ts_ns,
                decoded.addr,
                decoded.old_addr,
                decoded.size,
                decoded.stack,
                decoded.tid
            ),
            (5, 0x1000, 0x2000, 64, 9, 3)
        );
        assert!(matches!(decoded.op, Op::Alloc));
        assert_eq!(decoded.kind, AllocKind::Realloc);
        let free = Event {
            op: EventOp::Free as u8,
            kind: AllocKind::Free as u8,
            ..event
        };
        assert!(matches!(
            decode(&bytes_of(&free)).expect("free").event.op,
            Op::Free
        ));
    }

    #[test]
    fn a_free_takes_the_newest_time_before_it() {
        let mut decoder = Decoder::new(100);
        let free = |addr: u64| addr.to_ne_bytes();
        // First in the buffer: the time the decoder started from.
        let first = decoder.decode(&free(0x10)).expect("free").event;
        assert_eq!((first.op, first.addr, first.ts_ns), (Op::Free, 0x10, 100));
        assert_eq!(first.kind, AllocKind::Free);
        let at = |ts_ns: u64| Event {
            ts_ns,
            addr: 0x20,
            size: 8,
            kind: AllocKind::Malloc as u8,
            op: EventOp::Alloc as u8,
            ..Event::default()
        };
        decoder.decode(&bytes_of(&at(500))).expect("alloc");
        // A record stamped earlier but reserved later (another CPU) does not move it back.
        decoder.decode(&bytes_of(&at(400))).expect("alloc");
        assert_eq!(decoder.decode(&free(0x20)).expect("free").event.ts_ns, 500);
        decoder.decode(&bytes_of(&at(900))).expect("alloc");
        assert_eq!(decoder.decode(&free(0x20)).expect("free").event.ts_ns, 900);
    }

    #[test]
    fn decodes_mapping_events() {
        let remap = Event {
            ts_ns: 5,
            addr: 0x20000,
            old_addr: 0x10000,
            size: 8192,
            stack_id: 4096,
            kind: AllocKind::Mmap as u8,
            op: EventOp::Remap as u8,
            ..Event::default()
        };
        let decoded = decode(&bytes_of(&remap)).expect("decodes").event;
        assert_eq!(decoded.op, Op::Remap { old_len: 4096 });
        assert_eq!(
            (decoded.addr, decoded.old_addr, decoded.size, decoded.stack),
            (0x20000, 0x10000, 8192, 0)
        );
        let map = Event {
            op: EventOp::Map as u8,
            stack_id: 77,
            ..remap
        };
        let decoded = decode(&bytes_of(&map)).expect("decodes").event;
        assert_eq!((decoded.op, decoded.stack), (Op::Map, 77));
    }

    #[test]
    fn rejects_malformed_records() {
        let event = Event {
            op: 9,
            kind: 1,
            ..Event::default()
        };
        assert!(decode(&bytes_of(&event)).is_none());
        let event = Event {
            op: 1,
            kind: 77,
            ..Event::default()
        };
        assert!(decode(&bytes_of(&event)).is_none());
        assert!(decode(&[0u8; 12]).is_none());
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(b >= a && a > 0);
    }
}
