//! Getting unwind tables into the kernel: one compiled table per distinct binary (keyed by
//! build id, so a binary mapped twice or shared by processes is processed once), laid out in one
//! rows array, and the target's executable mappings pointing into it.
use std::{
    collections::HashMap,
    fs,
    os::fd::{AsRawFd as _, BorrowedFd},
    path::PathBuf,
};

use object::{Object as _, ObjectSection as _};
use tracer_common::unwind::{ExecMapping, MAX_MAPPINGS, UnwindRow};

use crate::{
    target::{Mapping, host_path},
    unwind::{self, UnwindTable},
};

/// A binary's identity: its GNU build id when it has one, else its path and inode.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BinaryKey {
    BuildId(Vec<u8>),
    Path(String, u64),
}

/// A compiled binary and, once loaded, where its rows sit in the kernel's array.
#[derive(Debug)]
struct Binary {
    name: String,
    /// The compiled table (kept for the user-space reference unwind of `--verify-unwind`).
    table: UnwindTable,
    rows: Vec<UnwindRow>,
    rows_start: Option<u32>,
    /// Raw ELF bytes are needed again for load biases; keep the path to re-read.
    host: PathBuf,
}

/// What one table build did, for the progress line and the header.
#[derive(Clone, Debug, Default)]
pub struct TableSummary {
    /// Distinct binaries with tables.
    pub binaries: usize,
    /// Rows in all of them.
    pub rows: usize,
    /// Bytes the rows take in the kernel.
    pub bytes: usize,
    /// Mapped files that could not be read or are not valid ELF files for this machine
    /// (skipped: frame pointers there).
    pub unreadable: usize,
    /// Binaries with tables that did not fit in the kernel's rows map (frame pointers there).
    pub not_loaded: usize,
}

/// All tables of one target.
#[derive(Debug, Default)]
pub struct UnwindTables {
    pid: u32,
    binaries: HashMap<BinaryKey, Binary>,
    /// Mapping path (as the target sees it) to binary key, for mappings already seen.
    keys: HashMap<(String, u64), Option<BinaryKey>>,
    next_row: u32,
    capacity: u32,
    /// Files skipped as unreadable or malformed, with why, in the order met.
    unreadable: Vec<(String, String)>,
}

fn build_id(data: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    file.build_id()
        .ok()
        .flatten()
        .map(<[u8]>::to_vec)
        .or_else(|| {
            file.section_by_name(".note.gnu.build-id")
                .and_then(|s| s.data().ok())
                .map(<[u8]>::to_vec)
        })
}

impl UnwindTables {
    /// Tables for process `pid` (files are read through `/proc/PID/root`).
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            ..Self::default()
        }
    }

    /// Compiles the tables of every executable file mapping not seen before, reporting progress
    /// as `(done, total, name)`. Binaries without CFI (or unreadable) get no table: the unwinder
    /// uses frame pointers there.
    pub fn compile_mappings(
        &mut self,
        maps: &[Mapping],
        mut progress: impl FnMut(usize, usize, &str),
    ) {
        let mut todo: Vec<(String, u64)> = Vec::new();
        for m in maps.iter().filter(|m| m.is_exec() && m.is_file()) {
            let key = (m.path.clone(), m.inode);
            if !self.keys.contains_key(&key) && !todo.contains(&key) {
                todo.push(key);
            }
        }
        let total = todo.len();
        for (done, (path, inode)) in todo.into_iter().enumerate() {
            let host = host_path(self.pid, &path);
            let name = path.rsplit('/').next().unwrap_or(&path).to_owned();
            progress(done, total, &name);
            let data = match fs::read(&host) {
                Ok(data) => data,
                Err(err) => {
                    self.unreadable.push((name, err.to_string()));
                    self.keys.insert((path, inode), None);
                    continue;
                }
            };
            let key = build_id(&data)
                .map_or_else(|| BinaryKey::Path(path.clone(), inode), BinaryKey::BuildId);
            let key = if self.binaries.contains_key(&key) {
                Some(key)
            } else {
                match unwind::compile(&data) {
                    Ok(table) => {
                        self.binaries.insert(
                            key.clone(),
                            Binary {
                                name: name.clone(),
                                rows: table.rows.clone(),
                                table,
                                rows_start: None,
                                host,
                            },
                        );
                        Some(key)
                    }
                    // A binary without CFI is not malformed: frame pointers unwind it.
                    Err(unwind::UnwindError::NoCfi) => None,
                    Err(err) => {
                        self.unreadable.push((name, err.to_string()));
                        None
                    }
                }
            };
            self.keys.insert((path, inode), key);
        }
        progress(total, total, "");
    }

    /// Rows compiled so far (loaded or not).
    pub fn total_rows(&self) -> usize {
        self.binaries.values().map(|b| b.rows.len()).sum()
    }

    /// What is compiled so far.
    pub fn summary(&self) -> TableSummary {
        let rows = self.total_rows();
        TableSummary {
            binaries: self.binaries.len(),
            rows,
            bytes: rows * size_of::<UnwindRow>(),
            unreadable: self.unreadable.len(),
            not_loaded: self
                .binaries
                .values()
                .filter(|b| b.rows_start.is_none() && !b.rows.is_empty())
                .count(),
        }
    }

    /// The files skipped as unreadable or malformed since `from` (an index into all of them),
    /// as `(name, why)`.
    pub fn unreadable_since(&self, from: usize) -> &[(String, String)] {
        self.unreadable.get(from..).unwrap_or_default()
    }

    /// Writes every binary not yet loaded into the rows map (of `capacity` entries) and returns
    /// how many rows were written. Binaries that do not fit stay unloaded (frame pointers there).
    pub fn load_rows(&mut self, rows_fd: BorrowedFd<'_>, capacity: u32) -> std::io::Result<usize> {
        self.capacity = capacity;
        let mut written = 0;
        let mut keys: Vec<BinaryKey> = self
            .binaries
            .iter()
            .filter(|(_, b)| b.rows_start.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort_by_key(|k| format!("{k:?}"));
        for key in keys {
            let Some(binary) = self.binaries.get_mut(&key) else {
                continue;
            };
            let len = u32::try_from(binary.rows.len()).unwrap_or(u32::MAX);
            if len == 0 || self.next_row.saturating_add(len) > self.capacity {
                continue;
            }
            update_batch(rows_fd, self.next_row, &binary.rows)?;
            binary.rows_start = Some(self.next_row);
            self.next_row += len;
            written += binary.rows.len();
        }
        Ok(written)
    }

    /// The kernel's view of `maps`: every executable mapping, sorted, pointing at its binary's
    /// rows (none for anonymous code, the vDSO or binaries without tables).
    pub fn exec_mappings(&self, maps: &[Mapping]) -> Vec<ExecMapping> {
        let mut out: Vec<ExecMapping> = Vec::new();
        let mut elf_cache: HashMap<PathBuf, Vec<u8>> = HashMap::new();
        for m in maps.iter().filter(|m| m.is_exec()) {
            let mut mapping = ExecMapping {
                start: m.start,
                end: m.end,
                ..ExecMapping::default()
            };
            if let Some(Some(key)) = self.keys.get(&(m.path.clone(), m.inode))
                && let Some(binary) = self.binaries.get(key)
                && let Some(rows_start) = binary.rows_start
            {
                let data = elf_cache
                    .entry(binary.host.clone())
                    .or_insert_with(|| fs::read(&binary.host).unwrap_or_default());
                if let Ok(bias) = unwind::load_bias(data, m.start, m.offset) {
                    mapping.bias = bias;
                    mapping.rows_start = rows_start;
                    mapping.rows_len = u32::try_from(binary.rows.len()).unwrap_or(0);
                }
            }
            out.push(mapping);
        }
        out.sort_by_key(|m| m.start);
        out.truncate(MAX_MAPPINGS as usize);
        out
    }

    /// The same mappings for the user-space reference unwinder: each with its binary's table
    /// when that table is loaded in the kernel too.
    pub fn reference_mappings<'a>(&'a self, maps: &[Mapping]) -> Vec<unwind::Mapping<'a>> {
        let kernel = self.exec_mappings(maps);
        kernel
            .iter()
            .map(|k| {
                let table = maps
                    .iter()
                    .find(|m| m.start == k.start && m.end == k.end)
                    .and_then(|m| self.keys.get(&(m.path.clone(), m.inode)))
                    .and_then(Option::as_ref)
                    .and_then(|key| self.binaries.get(key))
                    .filter(|b| b.rows_start.is_some() && k.rows_len > 0)
                    .map(|b| &b.table);
                unwind::Mapping {
                    start: k.start,
                    end: k.end,
                    bias: k.bias,
                    table,
                }
            })
            .collect()
    }

    /// Names of the binaries with tables, for messages.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.binaries.values().map(|b| b.name.clone()).collect();
        names.sort();
        names
    }
}

/// `BPF_MAP_UPDATE_BATCH` on an array map: `values[i]` goes to key `first + i`. aya 0.14 has no
/// batch operations, and one syscall per row would make a 400k-row binary slow to load.
pub fn update_batch<T: Copy>(fd: BorrowedFd<'_>, first: u32, values: &[T]) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const CHUNK: usize = 65536;
    for (i, chunk) in values.chunks(CHUNK).enumerate() {
        let base = first + u32::try_from(i * CHUNK).unwrap_or(u32::MAX);
        let keys: Vec<u32> = (0..chunk.len()).map(|k| base + k as u32).collect();
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` describes `keys` and `chunk`, both alive and of `count` elements of the
        // map's key and value sizes; the kernel reads them and writes back `count`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if attr.count as usize != chunk.len() {
            return Err(std::io::Error::other(format!(
                "batch update wrote {} of {} rows",
                attr.count,
                chunk.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn mapping(path: &Path, inode: u64) -> Mapping {
        Mapping {
            start: 0x1000 * inode,
            end: 0x1000 * (inode + 1),
            perms: "r-xp".to_owned(),
            offset: 0,
            inode,
            path: path.to_string_lossy().into_owned(),
        }
    }

    #[test]
    fn malformed_and_missing_files_are_counted_skips() {
        // Given a mapped file that is not ELF, one that is gone, and a real binary
        let dir = tempfile::tempdir().expect("temp dir");
        let garbage = dir.path().join("garbage.so");
        std::fs::write(&garbage, b"\x7fELF but not really").expect("writing");
        let missing = dir.path().join("deleted.so");
        let maps = [
            mapping(&garbage, 1),
            mapping(&missing, 2),
            mapping(Path::new("/usr/bin/true"), 3),
        ];
        // When their tables are compiled (the files read as this process sees them)
        let mut tables = UnwindTables::new(std::process::id());
        tables.compile_mappings(&maps, |_, _, _| {});
        // Then the two bad ones are skipped, counted and named; the real one has a table
        let summary = tables.summary();
        assert_eq!((summary.unreadable, summary.binaries), (2, 1));
        let names: Vec<&str> = tables
            .unreadable_since(0)
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(names, ["garbage.so", "deleted.so"]);
        assert!(tables.unreadable_since(2).is_empty());
        // And seeing them again does not count them twice
        tables.compile_mappings(&maps, |_, _, _| {});
        assert_eq!(tables.summary().unreadable, 2);
    }
}
