//! The host runner: reads a scenario on stdin, performs it with real
//! system calls in this process (and the processes it forks), prints the
//! observations as JSON on stdout. `hmm diff`/`hmm fuzz` start it (or the
//! CLI itself as `hmm __host-runner`); a later issue builds it statically
//! for a VM guest.

#![forbid(unsafe_code)]

fn main() {
    hmm_scenario::exec::host::runner_main()
}
