//! The demos: each tells one story against the real model, printing what
//! happens and checking that it is what Linux would do; a surprise ends the
//! demo with an error (and a non-zero exit).

mod dax;
mod mirror;
mod mm;

use std::sync::Arc;

use clap::Subcommand;
use std::sync::Mutex;

use hmm_types::{Errno, MmuNotifier, NotifierRange};

use crate::render::Out;

/// Which story.
#[derive(Debug, Clone, Subcommand)]
pub enum Which {
    /// The seed story: a device mirrors DAX mappings (2 MiB and 1 GiB
    /// leaves) without pinning them; truncation proceeds; a pin blocks it.
    Dax {
        /// Keep the emulated pmem device's image in FILE and reuse it next
        /// time (default: a temporary file). A FILE that is neither new,
        /// empty, nor a device image is refused.
        #[arg(long, value_name = "FILE")]
        pmem: Option<std::path::PathBuf>,
        /// Erase FILE and format a new device image on it, whatever it
        /// holds.
        #[arg(long, requires = "pmem")]
        format: bool,
    },
    /// The CPU side: faults, THP, copy-on-write after fork, invalidations.
    Mm,
}

/// A demo failed: what was expected did not happen.
#[derive(Debug)]
pub struct DemoError(pub String);

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DemoError {}

impl From<hmm::HmmError> for DemoError {
    fn from(error: hmm::HmmError) -> Self {
        Self(format!("{error}"))
    }
}

impl From<hmm_types::Errno> for DemoError {
    fn from(error: hmm_types::Errno) -> Self {
        Self(format!("{error}"))
    }
}

impl From<hmm_mm::MmError> for DemoError {
    fn from(error: hmm_mm::MmError) -> Self {
        Self(format!("{error} ({})", error.errno().name()))
    }
}

/// Checks a demo expectation.
pub fn expect(condition: bool, what: &str) -> Result<(), DemoError> {
    if condition {
        Ok(())
    } else {
        Err(DemoError(format!("expected {what}")))
    }
}

/// Runs one demo.
pub fn run(which: Which, out: &Out) -> Result<(), DemoError> {
    match which {
        Which::Dax { pmem, format } => dax::run(out, pmem.as_deref(), format),
        Which::Mm => mm::run(out),
    }
}

/// A subscriber that collects invalidation starts for the narrator.
#[derive(Default)]
pub struct Narrator {
    seen: Mutex<Vec<NotifierRange>>,
}

impl Narrator {
    /// Prints and forgets what was seen since the last call.
    pub fn tell(&self, out: &Out) -> usize {
        let seen = std::mem::take(&mut *self.seen.lock().expect("narrator lock"));
        for range in &seen {
            let end = if range.end == u64::MAX { "end".to_string() } else { format!("{:#x}", range.end) };
            out.event(&format!("{} [{:#x}, {end})", range.event.kernel_name(), range.start));
        }
        seen.len()
    }
}

impl MmuNotifier for Narrator {
    fn invalidate_range_start(&self, range: &NotifierRange) -> Result<(), Errno> {
        self.seen.lock().expect("narrator lock").push(*range);
        Ok(())
    }
    fn invalidate_range_end(&self, _range: &NotifierRange) {}
}

/// Subscribes a narrator to an address space.
pub fn narrate(mm: &hmm_mm::Mm) -> Arc<Narrator> {
    let narrator = Arc::new(Narrator::default());
    mm.register_notifier(narrator.clone());
    narrator
}
