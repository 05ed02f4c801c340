//! The VM executor: scenarios run by the host runner inside a QEMU guest
//! booted from the reference kernel (Linux 7.3 with `test_hmm`, an fs-dax
//! mount on `/mnt/dax`), many per boot.
//!
//! [`VmExecutor::run_batch`] builds the runner as a static binary (the
//! host's gnu target with `crt-static`, into its own target directory),
//! writes a payload directory (the runner, one `.hmm` file per scenario,
//! a `run` script) and boots it with `kernel-lab/lab boot`. The script
//! prints the guest's settings, then for each scenario a marker line and
//! the runner's JSON reply; this module reads them back from the console.
//! A reply that is missing or garbled (a crash, a kernel message in the
//! middle of it) makes that scenario's trace aborted, never a match.
//!
//! The kernel lab is `$HMM_KERNEL_LAB` or `kernel-lab/` in the workspace.
//! Each executor claims a console file of its own under `target/`, so
//! runs from one workspace may share the machine but never a console.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::host::{RunnerReply, PROGRESS_ENV};
use super::vm_console::claim_console;
pub use super::vm_crash::{kernel_crash, KernelCrash, KERNEL_CRASH};
use super::{Capability, ExecError, Executor};
use crate::lang::ast::Scenario;
use crate::observe::Trace;

/// Seconds one scenario may run in the guest (TCG is slow).
const SCENARIO_TIMEOUT_S: u32 = 120;
/// The static runner's target directory, under the workspace's `target/`.
const STATIC_TARGET_DIR: &str = "target/static";
/// The target triple of the static runner.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// What the guest reported about itself before the scenarios.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestInfo {
    /// `uname -r`.
    pub release: String,
    /// /sys/kernel/mm/transparent_hugepage/enabled.
    pub thp: String,
    /// /sys/kernel/mm/transparent_hugepage/use_zero_page.
    pub use_zero_page: String,
    /// /proc/sys/vm/nr_hugepages.
    pub nr_hugepages: String,
    /// /proc/sys/vm/mmap_min_addr: the value in force in kernel-lab's
    /// guest, built without `CONFIG_SECURITY` (no LSM floor above it).
    pub mmap_min_addr: String,
}

impl GuestInfo {
    /// `(major, minor)` of the guest's kernel.
    pub fn version(&self) -> Option<(u32, u32)> {
        let mut parts = self.release.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// The model's machine configured like the guest (THP policy, huge
    /// zero page, hugetlb pool; no swap).
    pub fn model_config(&self) -> hmm_mm::KernelConfig {
        use hmm_mm::ThpMode;
        let thp = if self.thp.contains("[always]") {
            ThpMode::Always
        } else if self.thp.contains("[never]") {
            ThpMode::Never
        } else {
            ThpMode::Madvise
        };
        hmm_mm::KernelConfig {
            ram_bytes: 1 << 30,
            thp,
            use_huge_zero_page: self.use_zero_page.trim() != "0",
            hugetlb_2m_pages: self.nr_hugepages.trim().parse().unwrap_or(0).min(64),
            hugetlb_1g_pages: 0,
            swap_pages: 0,
            mmap_min_addr: self.mmap_min_addr.trim().parse().unwrap_or(hmm_mm::vma::MMAP_MIN_ADDR),
        }
    }
}

/// One boot's results.
#[derive(Debug)]
pub struct VmBatch {
    /// The guest's settings.
    pub guest: GuestInfo,
    /// One per scenario, in order: its trace, or why the runner could not
    /// run it (a parse error, a window not free).
    pub traces: Vec<Result<Trace, ExecError>>,
    /// How long the boot took.
    pub elapsed: std::time::Duration,
    /// The guest kernel's own complaints (WARN, BUG, Oops lines of its
    /// log): a verdict from a boot with one may show a kernel defect
    /// rather than the model's.
    pub kernel_warnings: Vec<String>,
}

/// Runs scenarios in a guest of the reference kernel.
#[derive(Debug, Clone)]
pub struct VmExecutor {
    /// The workspace root (where `cargo build` runs).
    pub root: PathBuf,
    /// The kernel lab directory (`lab`, `boot`).
    pub lab: PathBuf,
    /// Where the last boot's console is kept.
    pub console: PathBuf,
    runner: Option<PathBuf>,
    /// Held while the executor lives: no other run in this workspace
    /// writes the same console.
    _console_claim: Option<std::sync::Arc<std::fs::File>>,
}

impl VmExecutor {
    /// An executor for the workspace at `root`; `ENOENT`-like errors if the
    /// lab is missing.
    pub fn new(root: &Path) -> Result<Self, ExecError> {
        let lab = std::env::var_os("HMM_KERNEL_LAB").map_or_else(|| root.join("kernel-lab"), PathBuf::from);
        if !lab.join("lab").is_file() {
            return Err(ExecError::Host(format!(
                "no kernel lab at {} (set HMM_KERNEL_LAB to its directory)",
                lab.display()
            )));
        }
        let (console, claim) = claim_console(&root.join("target"))?;
        Ok(Self { root: root.to_path_buf(), lab, console, runner: None, _console_claim: Some(claim.into()) })
    }

    /// The workspace root above `start` (the directory whose Cargo.toml
    /// has `[workspace]`).
    pub fn find_root(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .find(|d| std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]")))
            .map(Path::to_path_buf)
    }

    /// Uses `runner` instead of building the static one (a test on this
    /// machine, or a runner built elsewhere).
    pub fn with_runner(mut self, runner: PathBuf) -> Self {
        self.runner = Some(runner);
        self
    }

    /// Builds the static runner once per executor.
    pub fn runner(&mut self) -> Result<PathBuf, ExecError> {
        if let Some(r) = &self.runner {
            return Ok(r.clone());
        }
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&self.root)
            .env("RUSTFLAGS", "-Ctarget-feature=+crt-static")
            .args(["build", "--release", "-p", "hmm-scenario", "--bin", "hmm-host-runner", "--target", TRIPLE])
            .args(["--target-dir", STATIC_TARGET_DIR])
            .status()
            .map_err(|e| ExecError::Host(format!("cargo: {e}")))?;
        if !status.success() {
            return Err(ExecError::Host(format!("building the static runner failed ({status})")));
        }
        let path = self.root.join(STATIC_TARGET_DIR).join(TRIPLE).join("release/hmm-host-runner");
        self.runner = Some(path.clone());
        Ok(path)
    }

    /// Runs `scenarios`, in one boot unless one crashes the kernel: the
    /// scenarios after it then run in the next boot. The console file
    /// holds every boot's console, one after the other.
    pub fn run_batch(&mut self, scenarios: &[Scenario]) -> Result<VmBatch, ExecError> {
        let mut batch = self.run_boot(scenarios)?;
        let mut consoles = std::fs::read_to_string(&self.console).unwrap_or_default();
        let mut from = 0;
        while batch.traces.len() == scenarios.len() {
            let crashed = batch.traces[from..]
                .iter()
                .position(|t| matches!(t, Ok(Trace { aborted: Some(why), .. }) if why.starts_with(KERNEL_CRASH)));
            let Some(next) = crashed.map(|c| from + c + 1) else { break };
            if next == scenarios.len() || !batch.traces[next..].iter().all(Result::is_err) {
                break;
            }
            let rest = self.run_boot(&scenarios[next..])?;
            consoles.push_str(&format!("\n=== next boot: scenario {next} of the batch is its s0\n"));
            consoles.push_str(&std::fs::read_to_string(&self.console).unwrap_or_default());
            batch.traces.truncate(next);
            batch.traces.extend(rest.traces);
            batch.kernel_warnings.extend(rest.kernel_warnings);
            batch.elapsed += rest.elapsed;
            from = next;
        }
        let _ = std::fs::write(&self.console, consoles);
        Ok(batch)
    }

    /// Copies the console of a boot that failed to a name of its own
    /// (`vm-console.failed-SECONDS.log` beside it); the console's own path
    /// if the copy fails.
    fn keep_failed_console(&self) -> PathBuf {
        let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let kept = self.console.with_file_name(format!("vm-console.failed-{seconds}.log"));
        match std::fs::copy(&self.console, &kept) {
            Ok(_) => kept,
            Err(_) => self.console.clone(),
        }
    }

    /// Runs `scenarios` in one boot.
    fn run_boot(&mut self, scenarios: &[Scenario]) -> Result<VmBatch, ExecError> {
        let runner = self.runner()?;
        let io = |what: &str, e: std::io::Error| ExecError::Host(format!("{what}: {e}"));
        let payload = std::env::temp_dir().join(format!("hmm-vm-payload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&payload);
        std::fs::create_dir_all(&payload).map_err(|e| io("payload directory", e))?;
        std::fs::copy(&runner, payload.join("hmm-host-runner")).map_err(|e| io("copying the runner", e))?;
        for (i, s) in scenarios.iter().enumerate() {
            std::fs::write(payload.join(format!("s{i}.hmm")), super::host::print_keeping_lines(s))
                .map_err(|e| io("writing a scenario", e))?;
        }
        let script = run_script(scenarios.len());
        let run = payload.join("run");
        std::fs::write(&run, script).map_err(|e| io("writing the run script", e))?;
        set_executable(&run).map_err(|e| io("chmod run", e))?;
        if let Some(dir) = self.console.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let started = std::time::Instant::now();
        let status = Command::new(self.lab.join("lab"))
            .arg("boot")
            .arg(&payload)
            .arg(&self.console)
            .status()
            .map_err(|e| io("kernel-lab/lab boot", e));
        let _ = std::fs::remove_dir_all(&payload);
        let status = status?;
        let console = std::fs::read_to_string(&self.console).map_err(|e| io("reading the console", e))?;
        // A kernel crash in a scenario ends the boot early: the replies
        // before it still count.
        let crashed = kernel_crash(&console).is_some() && console.contains("=== guest release ");
        if !status.success() && !crashed {
            // Kept apart: a retry would overwrite the console of the boot
            // that failed (a hang until the lab's timeout, with no oops).
            let kept = self.keep_failed_console();
            return Err(ExecError::Host(format!("the guest failed ({status}); console in {}", kept.display())));
        }
        let (guest, traces) = parse_console(&console, scenarios.len());
        let mut warnings = kernel_warnings(&console);
        warnings.extend(kernel_crash(&console).map(|c| c.summary()));
        Ok(VmBatch { guest, traces, elapsed: started.elapsed(), kernel_warnings: warnings })
    }
}

#[cfg(unix)]
fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// The guest's script: its settings, then per scenario a marker, the
/// runner's reply on one line, and an end marker.
fn run_script(n: usize) -> String {
    let mut s = String::from("#!/bin/sh\n# Written by hmm's VM executor: runs each scenario with the host runner.\n");
    // The guest's init formats the NVDIMM with `mke2fs` from PATH, which
    // busybox's applet (no ext4) may shadow: do it with the host's copy
    // in /sbin if the fs-dax mount is missing.
    s.push_str("if ! grep -q ' /mnt/dax ' /proc/mounts && [ -b /dev/pmem0 ] && [ -x /sbin/mke2fs ]; then\n");
    s.push_str("  /sbin/mke2fs -q -t ext4 -b 4096 /dev/pmem0 && mount -o dax /dev/pmem0 /mnt/dax && echo '=== fs-dax mounted by the payload'\n");
    s.push_str("fi\n");
    // Kernel messages go to the log only (dumped after the payload): an
    // error line printed by the console thread in the middle of a reply
    // would garble it.
    s.push_str("echo 1 > /proc/sys/kernel/printk\n");
    // An oops ends the boot at once (panic=-1 and -no-reboot) instead of
    // leaving a dead runner and a hung guest until the lab's timeout; the
    // runner announces each step on the console, so the step that crashed
    // the kernel is known.
    s.push_str("echo 1 > /proc/sys/kernel/panic_on_oops\n");
    s.push_str("echo \"=== guest release $(uname -r)\"\n");
    s.push_str("echo \"=== guest thp $(cat /sys/kernel/mm/transparent_hugepage/enabled)\"\n");
    s.push_str("echo \"=== guest zero $(cat /sys/kernel/mm/transparent_hugepage/use_zero_page)\"\n");
    s.push_str("echo \"=== guest hugepages $(cat /proc/sys/vm/nr_hugepages)\"\n");
    s.push_str("echo \"=== guest mmap_min_addr $(cat /proc/sys/vm/mmap_min_addr)\"\n");
    s.push_str(
        "echo \"=== guest devdax $(readlink /dev/hmm-devdax) $(cat /sys/bus/dax/devices/*/size 2>/dev/null)\"\n",
    );
    s.push_str(&format!("i=0\nwhile [ $i -lt {n} ]; do\n"));
    // The kernel log says which scenario a message came from.
    s.push_str("  echo \"hmm: scenario $i\" > /dev/kmsg\n");
    s.push_str(&format!(
        "  {PROGRESS_ENV}=/dev/console timeout {SCENARIO_TIMEOUT_S} ./hmm-host-runner <s$i.hmm >/tmp/reply 2>/tmp/err\n  st=$?\n"
    ));
    s.push_str("  echo \"=== reply $i $st\"\n  cat /tmp/reply\n  echo\n");
    s.push_str("  echo \"=== stderr $i $(head -c 400 /tmp/err | tr '\\n' ' ')\"\n");
    s.push_str("  i=$((i + 1))\ndone\n");
    s
}

/// Reads the guest's settings and the `n` replies out of the console.
fn parse_console(console: &str, n: usize) -> (GuestInfo, Vec<Result<Trace, ExecError>>) {
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut guest = GuestInfo::default();
    let field = |prefix: &str| lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or("").trim().to_string();
    guest.release = field("=== guest release ");
    guest.thp = field("=== guest thp ");
    guest.use_zero_page = field("=== guest zero ");
    guest.nr_hugepages = field("=== guest hugepages ");
    guest.mmap_min_addr = field("=== guest mmap_min_addr ");
    let aborted = |why: String| Ok(Trace { window: 0, records: vec![], aborted: Some(why) });
    let crash = kernel_crash(console);
    let mut crash_reported = false;
    let traces = (0..n)
        .map(|i| {
            let marker = format!("=== reply {i} ");
            let Some(at) = lines.iter().position(|l| l.starts_with(&marker)) else {
                return match &crash {
                    // The first scenario without a reply is the one the
                    // kernel crashed in; the later ones never ran.
                    Some(crash) if !crash_reported => {
                        crash_reported = true;
                        aborted(crash.summary())
                    }
                    Some(_) => {
                        Err(ExecError::Host("not run: the guest's kernel crashed in an earlier scenario".into()))
                    }
                    None => aborted("the guest printed no reply (did it crash?)".into()),
                };
            };
            let status = lines[at][marker.len()..].trim();
            let stderr = lines[at..]
                .iter()
                .find_map(|l| l.strip_prefix(&format!("=== stderr {i} ")))
                .unwrap_or("")
                .trim()
                .to_string();
            let reply = lines.get(at + 1).copied().unwrap_or("");
            match serde_json::from_str::<RunnerReply>(reply) {
                Ok(RunnerReply::Trace(trace)) => Ok(trace),
                Ok(RunnerReply::Error(e)) => Err(ExecError::Host(e)),
                Err(_) => aborted(format!("runner exit status {status} in the guest, no readable reply: {stderr}")),
            }
        })
        .collect();
    (guest, traces)
}

/// The lines of the guest's kernel log (between `=== dmesg begin` and
/// `=== dmesg end`) that report a WARN, a BUG or an Oops.
fn kernel_warnings(console: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        match line {
            "=== dmesg begin" => inside = true,
            "=== dmesg end" => inside = false,
            _ if inside && ["WARNING:", "BUG:", "Oops:", "kernel BUG"].iter().any(|k| line.contains(k)) => {
                out.push(line.to_string())
            }
            _ => {}
        }
    }
    out
}

impl Executor for VmExecutor {
    fn name(&self) -> &'static str {
        "vm"
    }
    fn supports(&self, cap: Capability) -> bool {
        matches!(
            cap,
            Capability::Frames
                | Capability::Devices
                | Capability::Dax
                | Capability::UffdRwp
                | Capability::GupTest
                | Capability::DevDax
        )
    }
    /// One boot for one scenario; prefer [`VmExecutor::run_batch`].
    fn run(&mut self, scenario: &Scenario) -> Result<Trace, ExecError> {
        let mut batch = self.run_batch(std::slice::from_ref(scenario))?;
        batch.traces.pop().unwrap_or_else(|| Err(ExecError::Host("no trace".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_gives_settings_and_replies() {
        let trace = Trace { window: 16, records: vec![], aborted: None };
        let reply = serde_json::to_string(&RunnerReply::Trace(trace.clone())).unwrap();
        let console = format!(
            "boot noise\r\n=== payload begin\r\n=== guest release 7.3.4+deb13-amd64\r\n\
             === guest thp always [madvise] never\r\n=== guest zero 1\r\n=== guest hugepages 64\r\n\
             === reply 0 0\r\n{reply}\r\n\r\n=== stderr 0 \r\n=== reply 1 139\r\n\r\n=== stderr 1 Segmentation fault\r\n"
        );
        let (guest, traces) = parse_console(&console, 3);
        assert_eq!(guest.version(), Some((7, 3)));
        assert_eq!(guest.model_config().hugetlb_2m_pages, 64);
        assert_eq!(traces[0].as_ref().unwrap(), &trace);
        let crashed = traces[1].as_ref().unwrap().aborted.clone().unwrap();
        assert!(crashed.contains("139") && crashed.contains("Segmentation"), "{crashed}");
        assert!(traces[2].as_ref().unwrap().aborted.is_some(), "a missing reply is aborted, not empty");
    }

    #[test]
    fn a_kernel_crash_names_its_step_and_ends_the_batch() {
        let trace = Trace { window: 16, records: vec![], aborted: None };
        let reply = serde_json::to_string(&RunnerReply::Trace(trace)).unwrap();
        let console = format!(
            "=== guest release 7.3.4\r\n=== step 1\r\n=== step 2\r\n=== reply 0 0\r\n{reply}\r\n\r\n=== stderr 0 \r\n\
             === step 1\r\n=== step 5\r\n[    7.26] BUG: unable to handle page fault for address: ffff897cffffe000\r\n\
             [    7.27] Oops: Oops: 0002 [#1] SMP NOPTI\r\n[    7.28] RIP: 0010:dmirror_fops_unlocked_ioctl+0x23b/0x7f0 [test_hmm]\r\n"
        );
        let crash = kernel_crash(&console).unwrap();
        assert_eq!(crash.line, Some(5));
        assert_eq!(crash.function.as_deref(), Some("dmirror_fops_unlocked_ioctl"));
        let (_, traces) = parse_console(&console, 3);
        assert!(traces[0].as_ref().unwrap().aborted.is_none());
        let reason = traces[1].as_ref().unwrap().aborted.clone().unwrap();
        assert_eq!(
            KernelCrash::parse_summary(&reason),
            Some((Some(5), Some("dmirror_fops_unlocked_ioctl".into()))),
            "{reason}"
        );
        assert!(traces[2].is_err(), "never ran");
        assert_eq!(kernel_crash("=== guest release 7\n=== reply 0 0\n"), None);
    }

    #[test]
    fn kernel_warnings_come_from_the_guest_log_only() {
        let console = "WARNING: not in the log\r\n=== dmesg begin\r\n[1.0] ok\r\n[2.0] WARNING: CPU: 0 at mm/memremap.c:1\r\n=== dmesg end\r\n";
        assert_eq!(kernel_warnings(console), ["[2.0] WARNING: CPU: 0 at mm/memremap.c:1"]);
    }

    #[test]
    fn the_script_runs_every_scenario() {
        let s = run_script(3);
        assert!(s.contains("-lt 3") && s.contains("./hmm-host-runner <s$i.hmm"), "{s}");
    }

    #[cfg(unix)]
    #[test]
    fn the_console_of_a_failed_boot_is_kept_apart() {
        // A lab whose guest hangs: it prints a console and fails.
        let dir = std::env::temp_dir().join(format!("hmm-failed-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lab = dir.join("lab");
        std::fs::write(&lab, "#!/bin/sh\necho 'the boot that hung' > \"$3\"\nexit 1\n").unwrap();
        set_executable(&lab).unwrap();
        let runner = dir.join("runner");
        std::fs::write(&runner, "").unwrap();
        let console = dir.join("vm-console.log");
        let mut vm = VmExecutor {
            root: dir.clone(),
            lab: dir.clone(),
            console: console.clone(),
            runner: Some(runner),
            _console_claim: None,
        };
        let error = vm.run_batch(&[Scenario::default()]).unwrap_err().to_string();
        let kept = error.split("console in ").nth(1).expect("the error names the console");
        assert!(kept.contains("vm-console.failed-"), "{error}");
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "the boot that hung\n");
        std::fs::write(&console, "a later boot").unwrap();
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "the boot that hung\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
