//! Test 39 of Linux 7.3's `hmm-tests.c`: a device read through
//! `HMM_DMIRROR_READ_UNLOCKED` faults pages that a userfaultfd handler
//! thread supplies with `UFFDIO_COPY` (delta §5.3). The stop eventfd the C
//! test polls beside the userfaultfd is the model's `PollInterrupt`.

use std::sync::Arc;
use std::thread;

use hmm_dmirror::uapi::HMM_DMIRROR_READ_UNLOCKED;
use hmm_mm::uffd::{
    PollInterrupt, Userfaultfd, O_CLOEXEC, O_NONBLOCK, UFFDIO_REGISTER_MODE_MISSING, UFFD_API, UFFD_EVENT_PAGEFAULT,
};
use hmm_types::Prot;

use crate::harness::{check_ints, check_ok, hmm_dmirror_cmd, Ctx, ANON};
use crate::verdict::Verdict;
use crate::{check, check_eq, skip};

/// The handler thread: poll, read one message, answer it with a page of
/// 0xAB; stop on the interrupt or anything unexpected.
fn handler(uffd: Arc<Userfaultfd>, page_size: u64) {
    let source = vec![0xABu8; page_size as usize];
    loop {
        let events = uffd.poll_wait();
        if events.interrupted || !events.readable {
            return;
        }
        let Ok(msg) = uffd.read() else { return };
        if msg.to_bytes().len() != 32 || msg.event != UFFD_EVENT_PAGEFAULT {
            return;
        }
        if uffd.copy(msg.address() & !(page_size - 1), &source, 0).is_err() {
            return;
        }
    }
}

/// Stops and joins the handler whatever the test's outcome.
struct Stop(Option<(PollInterrupt, thread::JoinHandle<()>)>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.0.take() {
            stop.interrupt();
            let _ = thread.join();
        }
    }
}

/// Test 39: READ_UNLOCKED of four missing pages of a MISSING-registered
/// anonymous range returns 0 with `cpages == 4`, and the device read the
/// handler's bytes.
pub(crate) fn userfaultfd_read(ctx: &Ctx) -> Verdict {
    let npages = 4;
    let size = npages * ctx.page_size;
    let Ok(uffd) = Userfaultfd::new(&ctx.cpu().mm, O_CLOEXEC | O_NONBLOCK) else {
        skip!("userfaultfd not available");
    };
    let uffd = Arc::new(uffd);
    check!(uffd.api(UFFD_API, 0).is_ok(), "UFFDIO_API");
    let mut buffer = ctx.buffer(size, Prot::RW, ANON)?;
    check!(uffd.register(buffer.ptr, size, UFFDIO_REGISTER_MODE_MISSING).is_ok(), "UFFDIO_REGISTER");
    let thread = {
        let (uffd, page_size) = (uffd.clone(), ctx.page_size);
        thread::spawn(move || handler(uffd, page_size))
    };
    let stop = Stop(Some((uffd.poll_interrupt(), thread)));
    check_ok(hmm_dmirror_cmd(ctx.fd(), HMM_DMIRROR_READ_UNLOCKED, &mut buffer, npages))?;
    check_eq!(buffer.cpages, npages, "cpages");
    let mirror = ctx.cpu().read_ints(buffer.mirror, buffer.ints())?;
    check_ints("mirror", &mirror, |_| 0xABAB_ABABu32 as i32)?;
    drop(stop);
    Ok(())
}
