//! What the first touch of fresh anonymous memory costs on this machine, the cost behind the
//! first round of a large model (DESIGN.md §6, "the first round of a large model").
//!
//! ```text
//! cargo run --release --example first_touch            # 1 GiB
//! cargo run --release --example first_touch -- 256MiB
//! cargo run --release --example first_touch -- 1GiB populate-write   # one variant only
//! ```
//!
//! Each variant maps a fresh private anonymous region of the size and times how its pages get
//! faulted in (the minor-fault count beside it):
//! - `touch-4k`: one byte written per 4 KiB page;
//! - `memset`: the whole region written (the faults happen inside the writes);
//! - `map-populate`: `mmap(MAP_POPULATE)`;
//! - `populate-write`: `madvise(MADV_POPULATE_WRITE)` (Linux ≥ 5.14), as `sys::populate_write`;
//! - `hugepage-touch`, `hugepage-populate-write`: the same after `madvise(MADV_HUGEPAGE)`;
//! - `kept-memset`: the whole region written again, the pages already in (a buffer kept
//!   across rounds): the floor.
//!
//! On a VM whose balloon reports free memory to the host, a page the host has taken back
//! costs a host fault too: run it twice, and after a pause, to see the spread.

use std::time::Instant;

use shmex_cli::harness::{parse_size, size_label, Res};

const PAGE: usize = 4096;

/// A private anonymous read-write map, unmapped when dropped.
struct Region {
    start: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize, extra_flags: libc::c_int) -> Res<Region> {
        // SAFETY: a new anonymous mapping at an address of the kernel's choice: no memory of
        // ours is affected.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Region {
            start: start.cast(),
            len,
        })
    }

    fn advise(&self, advice: libc::c_int) -> Res<()> {
        // SAFETY: the range is exactly this mapping; the advice used here (huge pages,
        // populate) changes how pages are backed, never their contents.
        let rc = unsafe { libc::madvise(self.start.cast(), self.len, advice) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` readable and writable bytes, initialized (zero or
        // written), alive while `self` is, and borrowed exclusively through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.start, self.len) }
    }

    fn touch_pages(&mut self) {
        for byte in self.bytes().iter_mut().step_by(PAGE) {
            // A volatile write so that the loop is not optimized away.
            let byte: *mut u8 = byte;
            // SAFETY: `byte` comes from an exclusive borrow of a byte of the mapping.
            unsafe { byte.write_volatile(1) };
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this mapping, which no reference outlives (`bytes` borrows
        // `self`).
        unsafe { libc::munmap(self.start.cast(), self.len) };
    }
}

fn minor_faults() -> i64 {
    // SAFETY: `rusage` is plain integers, for which all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, exclusively borrowed `rusage` for the kernel to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt
}

/// Times `f`, prints and returns the figure.
fn timed(label: &str, variant: &str, f: impl FnOnce() -> Res<()>) -> Res<()> {
    if std::env::args().nth(2).is_some_and(|only| only != variant) {
        return Ok(());
    }
    let faults = minor_faults();
    let start = Instant::now();
    f()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let faults = minor_faults() - faults;
    println!("{variant:<26}{ms:>10.1} ms {faults:>9} minor faults");
    println!("RESULT first-touch-{variant} {label} time_ms {ms:.4} ms");
    Ok(())
}

fn main() -> Res<()> {
    let len = match std::env::args().nth(1) {
        Some(size) => parse_size(&size)?,
        None => 1 << 30,
    };
    let label = size_label(len);
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_else(|_| "unknown".into());
    println!(
        "first touch of {label} of fresh anonymous memory; transparent huge pages: {}",
        thp.trim()
    );
    timed(&label, "touch-4k", || {
        Region::new(len, 0)?.touch_pages();
        Ok(())
    })?;
    timed(&label, "memset", || {
        Region::new(len, 0)?.bytes().fill(1);
        Ok(())
    })?;
    timed(&label, "map-populate", || {
        Region::new(len, libc::MAP_POPULATE).map(drop)
    })?;
    timed(&label, "populate-write", || {
        Region::new(len, 0)?.advise(libc::MADV_POPULATE_WRITE)
    })?;
    timed(&label, "hugepage-touch", || {
        let mut region = Region::new(len, 0)?;
        region.advise(libc::MADV_HUGEPAGE)?;
        region.touch_pages();
        Ok(())
    })?;
    timed(&label, "hugepage-populate-write", || {
        let region = Region::new(len, 0)?;
        region.advise(libc::MADV_HUGEPAGE)?;
        region.advise(libc::MADV_POPULATE_WRITE)
    })?;
    let mut kept = Region::new(len, 0)?;
    kept.bytes().fill(1);
    timed(&label, "kept-memset", || {
        kept.bytes().fill(2);
        Ok(())
    })?;
    Ok(())
}
