//! Reading and writing another process's memory (`process_vm_readv`, `process_vm_writev`): no
//! ptrace, no signal, the target runs on.

/// The memory of process `pid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pid: libc::pid_t,
}

impl Memory {
    /// The memory of `pid`.
    pub fn of(pid: u32) -> Self {
        Self {
            pid: pid as libc::pid_t,
        }
    }

    /// Fills `buf` from `addr`; an error unless all of it could be read.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which the call fills at most; `remote` is only an
        // address in the other process, which the kernel checks.
        let n = unsafe {
            libc::process_vm_readv(self.pid, &raw const local, 1, &raw const remote, 1, 0)
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }

    /// The 8-byte little-endian word at `addr`.
    pub fn read_u64(&self, addr: u64) -> std::io::Result<u64> {
        let mut word = [0u8; 8];
        self.read(addr, &mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    /// Writes the 8-byte little-endian word `value` at `addr`.
    pub fn write_u64(&self, addr: u64, value: u64) -> std::io::Result<()> {
        let word = value.to_le_bytes();
        let local = libc::iovec {
            iov_base: word.as_ptr().cast_mut().cast(),
            iov_len: word.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: word.len(),
        };
        // SAFETY: `local` describes `word`, which the call only reads; `remote` is only an
        // address in the other process, which the kernel checks.
        let n = unsafe {
            libc::process_vm_writev(self.pid, &raw const local, 1, &raw const remote, 1, 0)
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != word.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_reports_bad_addresses() {
        let value: u64 = 0x1122_3344_5566_7788;
        let memory = Memory::of(std::process::id());
        assert_eq!(
            memory
                .read_u64(std::ptr::from_ref(&value) as u64)
                .expect("readable"),
            value
        );
        assert!(memory.read_u64(8).is_err());
        let target = Box::new(0u64);
        let at = std::ptr::from_ref(&*target) as u64;
        memory.write_u64(at, 42).expect("writable");
        assert_eq!(std::hint::black_box(*target), 42);
    }
}
