//! The host executor: the running Linux kernel as the referee.
//!
//! [`HostExecutor`] starts a runner process per scenario (the
//! `hmm-host-runner` binary, or `hmm __host-runner`: the CLI re-executes
//! itself so nothing has to be installed beside it), writes the scenario on
//! its stdin and reads a JSON [`RunnerReply`] from its stdout. A crash or a
//! hang of the runner is contained there and reported as an aborted trace.
//!
//! Inside the runner ([`runner_main`]) the scenario's `main` process is the
//! runner itself; `fork` forks real processes that serve calls over pipes
//! (`worker_loop`). Every call runs in its own process (`calls.rs`), with
//! the window checked free of the runner's own mappings first; `procfs.rs`
//! reads maps and pagemap; `sys.rs` and `sys/` hold every raw system call
//! and all the `unsafe`.

mod calls;
mod device;
mod pin;
mod procfs;
pub(crate) mod sys;
mod uffd;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Backend, Call, Capability, ExecError, Executor, FileId, ProcId};
use crate::lang::ast::Scenario;
use crate::observe::{Outcome, Trace};
use calls::{Local, Slot};

/// Most processes a host scenario may have (`main` included).
pub const MAX_PROCS: usize = 16;
/// How long a runner may take before it is killed.
pub const RUNNER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the runner prints: the trace, or why it could not run.
#[derive(Debug, Serialize, Deserialize)]
pub enum RunnerReply {
    /// The scenario ran.
    Trace(Trace),
    /// It could not (parse error, window not free...).
    Error(String),
}

/// Runs scenarios on this machine's kernel through a runner child.
#[derive(Debug, Clone)]
pub struct HostExecutor {
    /// The runner program.
    pub program: std::path::PathBuf,
    /// Its arguments (e.g. `__host-runner` when it is the CLI itself).
    pub args: Vec<String>,
}

impl HostExecutor {
    /// Why the host executor cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        if !cfg!(target_os = "linux") {
            return Some("the host executor needs Linux".into());
        }
        if std::fs::metadata("/proc/self/pagemap").is_err() {
            return Some("/proc/self/pagemap is not readable".into());
        }
        None
    }

    /// Whether this kernel offers userfaultfd's RWP mode (Linux 7.3); the
    /// runner refuses the steps needing it otherwise.
    pub fn offers_uffd_rwp() -> bool {
        uffd::offers_rwp()
    }
}

impl Executor for HostExecutor {
    fn name(&self) -> &'static str {
        "host"
    }
    fn supports(&self, cap: Capability) -> bool {
        cap == Capability::Frames
    }
    fn run(&mut self, scenario: &Scenario) -> Result<Trace, ExecError> {
        let host = |e: std::io::Error| ExecError::Host(format!("{}: {e}", self.program.display()));
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(host)?;
        let text = print_keeping_lines(scenario);
        // A runner that dies at once closes its stdin: that shows in its
        // exit status below, so a write error here is not the story.
        let _ = child.stdin.take().expect("piped").write_all(text.as_bytes());
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).map(|_| out)
        });
        let deadline = Instant::now() + RUNNER_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(host)? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let out = reader.join().map_err(|_| ExecError::Host("reader thread panicked".into()))?.map_err(host)?;
        let aborted = |why: String| Ok(Trace { window: 0, records: vec![], aborted: Some(why) });
        let Some(status) = status else {
            return aborted(format!("runner killed after {RUNNER_TIMEOUT:?}"));
        };
        match serde_json::from_str::<RunnerReply>(&out) {
            Ok(RunnerReply::Trace(trace)) => Ok(trace),
            Ok(RunnerReply::Error(e)) => Err(ExecError::Host(e)),
            Err(_) => {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                aborted(format!("runner ended with {status}: {}", err.trim()))
            }
        }
    }
}

/// The canonical text with each step on its source line, so the runner's
/// line numbers match the file's.
pub(crate) fn print_keeping_lines(scenario: &Scenario) -> String {
    let mut out = String::new();
    let mut line = 1;
    for step in &scenario.steps {
        while line < step.line {
            out.push('\n');
            line += 1;
        }
        out.push_str(&crate::lang::print_step(step));
        out.push('\n');
        line += 1;
    }
    out
}

/// The runner's `main`: reads a scenario on stdin, runs it on this kernel,
/// prints a [`RunnerReply`] as JSON, exits 0.
pub fn runner_main() -> ! {
    // Die with the parent; adopt orphaned grandchildren so they are reaped.
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64);
    let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    let reply = run_here();
    let text = serde_json::to_string(&reply).unwrap_or_else(|e| format!("{{\"Error\":\"{e}\"}}"));
    let _ = std::io::stdout().write_all(text.as_bytes());
    let _ = std::io::stdout().flush();
    sys::exit_now(0)
}

fn run_here() -> RunnerReply {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        return RunnerReply::Error(format!("reading the scenario: {e}"));
    }
    let scenario = match crate::lang::parse("<stdin>", &text) {
        Ok(s) => s,
        Err(e) => return RunnerReply::Error(e.to_string()),
    };
    if let Err(e) = device::clear_devdax_left_over() {
        return RunnerReply::Error(format!("clearing the device-DAX ranges of earlier scenarios: {e}"));
    }
    let mut slots = Vec::new();
    for _ in 0..MAX_PROCS {
        match (sys::pipe(), sys::pipe()) {
            (Ok((cmd_r, cmd_w)), Ok((rep_r, rep_w))) => slots.push(Slot { cmd_r, cmd_w, rep_r, rep_w }),
            _ => return RunnerReply::Error("cannot create pipes".into()),
        }
    }
    let ksm_running = std::fs::read_to_string("/sys/kernel/mm/ksm/run").is_ok_and(|s| s.trim() != "0");
    let local = Local {
        window: (0, 0),
        files: HashMap::new(),
        slots: slots.clone(),
        is_coordinator: true,
        ksm_running,
        uffd: Default::default(),
    };
    // The VM executor's script names a file (the guest's console) where
    // each step is announced before it runs.
    let progress =
        std::env::var_os(PROGRESS_ENV).and_then(|path| std::fs::OpenOptions::new().write(true).open(path).ok());
    let mut backend =
        HostBackend { local, alive: vec![true; MAX_PROCS], mirrors_of_main: Vec::new(), main_exited: false, progress };
    let result = super::run_scenario(&scenario, &mut backend);
    // Closing the command pipes ends every worker; then reap them all.
    for slot in &slots {
        let _ = sys::close(slot.cmd_w);
    }
    reap_workers();
    match result {
        Ok(trace) => RunnerReply::Trace(trace),
        Err(e) => RunnerReply::Error(e.to_string()),
    }
}

/// How long the workers may take to end once their command pipes closed.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// Reaps the workers, giving up after [`REAP_TIMEOUT`]: a scenario that
/// ends with a fork still waiting for its FORK event to be read leaves a
/// half-made child holding copies of every pipe, so no worker sees the end
/// of its commands. The runner's exit then kills the waiting fork, which
/// lets the rest end on their own.
fn reap_workers() {
    let deadline = Instant::now() + REAP_TIMEOUT;
    loop {
        match sys::reap_any() {
            sys::Reaped::One => {}
            sys::Reaped::NoChildren => return,
            sys::Reaped::NoneEnded if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            sys::Reaped::NoneEnded => return,
        }
    }
}

/// The runner's side of the interpreter: `main`'s calls run here, the
/// others go to their worker.
struct HostBackend {
    local: Local,
    alive: Vec<bool>,
    /// The test-device files `main` opened: mirrors of its address space.
    mirrors_of_main: Vec<FileId>,
    /// `main` ran `exit`. The runner itself cannot exit, so its address
    /// space lives on, where Linux's would be gone (`mmget_not_zero` fails
    /// in every mirror command): what a mirror of it answers afterwards
    /// is not Linux's answer.
    main_exited: bool,
    /// Where each step is announced ([`PROGRESS_ENV`]).
    progress: Option<std::fs::File>,
}

/// The environment variable naming the file where the runner writes
/// `=== step LINE` before each step.
pub const PROGRESS_ENV: &str = "HMM_RUNNER_PROGRESS";

impl Backend for HostBackend {
    fn supports(&self, cap: Capability) -> bool {
        device::supports(cap)
    }

    fn step_started(&mut self, line: usize) {
        if let Some(file) = &mut self.progress {
            let _ = file.write_all(format!("=== step {line}\n").as_bytes());
        }
    }

    fn set_window(&mut self, base: u64, len: u64) -> Result<(), ExecError> {
        let bad = |m: String| ExecError::Window { line: 1, message: m };
        if base % (1 << 21) != 0 || len % (1 << 21) != 0 || len == 0 {
            return Err(bad(format!("window {base:#x}+{len:#x}: base and length must be multiples of 2 MiB")));
        }
        let end = base
            .checked_add(len)
            .filter(|&e| e <= hmm_types::TASK_SIZE)
            .ok_or_else(|| bad(format!("window {base:#x}+{len:#x} is outside the user address space")))?;
        let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| ExecError::Host(e.to_string()))?;
        if let Some(vma) = maps.lines().filter_map(procfs::parse_maps_line).find(|v| v.start < end && base < v.end) {
            return Err(bad(format!(
                "window {base:#x}..{end:#x} is not free: the runner has {:#x}..{:#x}",
                vma.start, vma.end
            )));
        }
        self.local.window = (base, len);
        Ok(())
    }

    fn call(&mut self, proc: ProcId, call: &Call) -> Outcome {
        if let Call::Device(d) = call {
            if self.main_exited && d.mirror_file().is_some_and(|f| self.mirrors_of_main.contains(&f)) {
                return Outcome::Inconclusive("a mirror of main's address space after main exited".into());
            }
        }
        if proc == 0 {
            let outcome = self.local.execute(call);
            match call {
                Call::Exit => self.main_exited = true,
                Call::Device(crate::exec::device::DeviceCall::Open { id, .. }) if outcome == Outcome::Ok => {
                    self.mirrors_of_main.push(*id)
                }
                _ => {}
            }
            return outcome;
        }
        if !self.alive[proc] {
            return Outcome::Inconclusive("the process died".into());
        }
        if self.local.uffd.fork_pending(proc) {
            return Outcome::Inconclusive("the fork child exists once its FORK event is read".into());
        }
        let slot = self.local.slots[proc];
        let mut line = serde_json::to_string(call).expect("calls serialize");
        line.push('\n');
        let reply = sys::write_all(slot.cmd_w, line.as_bytes()).ok().and_then(|()| read_line(slot.rep_r));
        match reply.and_then(|l| serde_json::from_str::<Outcome>(&l).ok()) {
            Some(outcome) => outcome,
            None if matches!(call, Call::Exit) => Outcome::Ok,
            None => {
                self.alive[proc] = false;
                Outcome::Inconclusive("the process crashed".into())
            }
        }
    }
}

/// Reads one `\n`-terminated line byte by byte (the pipes carry one
/// message at a time, so nothing is read ahead).
fn read_line(fd: std::os::fd::RawFd) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match sys::read(fd, &mut byte) {
            Ok(1) if byte[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) => line.push(byte[0]),
            Ok(_) => return None,
            Err(libc::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// A forked process of the scenario: serves calls from its slot until the
/// runner closes the pipe or the scenario makes it exit.
fn worker_loop(local: &mut Local, slot: Slot) -> ! {
    loop {
        let Some(line) = read_line(slot.cmd_r) else { sys::exit_now(0) };
        let Ok(call) = serde_json::from_str::<Call>(&line) else { sys::exit_now(2) };
        // An exit first drops the window and the files (what `exit_mmap`
        // and `exit_files` do), so the runner's next observation never
        // races with the process's teardown; then it replies and exits.
        let outcome = local.execute(&call);
        let mut reply = serde_json::to_string(&outcome).expect("outcomes serialize");
        reply.push('\n');
        if sys::write_all(slot.rep_w, reply.as_bytes()).is_err() || matches!(call, Call::Exit) {
            sys::exit_now(0);
        }
    }
}
