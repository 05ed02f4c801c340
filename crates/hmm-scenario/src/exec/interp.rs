//! The interpreter both executors share: binds names, tracks the acting
//! process and which processes have exited, turns each [`Op`] into a
//! [`Call`] for the backend, and checks `expect` lines.

use std::collections::HashMap;

use super::device::DeviceCall;
use super::{Backend, Call, ExecError, ProcId};
use crate::lang::ast::{Expr, Op, Scenario, DEFAULT_WINDOW, MAIN_PROC, WINDOW_NAME};
use crate::lang::device::DeviceOp;
use crate::lang::print_step;
use crate::observe::{Outcome, Shown, Trace};

/// `MAP_FAILED`, what a failed mmap or mremap binds its name to.
const MAP_FAILED: u64 = u64::MAX;
/// `ESRCH`, the outcome of an operation in a process that has exited.
const ESRCH: i32 = 3;
/// `EBADF`, the outcome of using a file whose memfd failed.
const EBADF: i32 = 9;

#[derive(Clone, Copy, Debug)]
enum Value {
    Addr(u64),
    Proc(ProcId),
    File(Option<usize>),
    Access(super::AccessId),
}

struct Env {
    names: HashMap<String, Value>,
    procs: Vec<String>,
    alive: Vec<bool>,
    files: usize,
    accesses: usize,
    /// `daxdir`: where `daxfile` creates files.
    dax_dir: String,
}

impl Env {
    fn addr(&self, line: usize, e: &Expr) -> Result<u64, ExecError> {
        let base = match &e.base {
            None => 0,
            Some(name) => match self.names.get(name) {
                Some(Value::Addr(va)) => *va,
                _ => return Err(ExecError::Unbound { line, name: name.clone() }),
            },
        };
        Ok(base.wrapping_add(e.offset as u64))
    }
    fn proc(&self, line: usize, name: &str) -> Result<ProcId, ExecError> {
        match self.names.get(name) {
            Some(Value::Proc(p)) => Ok(*p),
            _ if name == MAIN_PROC => Ok(0),
            _ => Err(ExecError::Unbound { line, name: name.into() }),
        }
    }
    fn file(&self, line: usize, name: &str) -> Result<Option<usize>, ExecError> {
        match self.names.get(name) {
            Some(Value::File(f)) => Ok(*f),
            _ => Err(ExecError::Unbound { line, name: name.into() }),
        }
    }
}

/// Runs `scenario` on `backend` and records every step.
pub fn run_scenario(scenario: &Scenario, backend: &mut dyn Backend) -> Result<Trace, ExecError> {
    let (mut base, mut len) = DEFAULT_WINDOW;
    for (i, step) in scenario.steps.iter().enumerate() {
        if let Op::Window { base: b, len: l } = &step.op {
            let empty = Env {
                names: HashMap::new(),
                procs: vec![],
                alive: vec![],
                files: 0,
                accesses: 0,
                dax_dir: String::new(),
            };
            if i != 0 {
                return Err(ExecError::Window { line: step.line, message: "`window` must be the first line".into() });
            }
            (base, len) = (empty.addr(step.line, b)?, empty.addr(step.line, l)?);
        }
    }
    backend.set_window(base, len)?;
    let mut env = Env {
        names: HashMap::from([(WINDOW_NAME.to_string(), Value::Addr(base))]),
        procs: vec![MAIN_PROC.to_string()],
        alive: vec![true],
        files: 0,
        accesses: 0,
        dax_dir: crate::lang::device::DEFAULT_DAX_DIR.to_string(),
    };
    let mut acting: ProcId = 0;
    let mut trace = Trace { window: base, ..Trace::default() };
    for (index, step) in scenario.steps.iter().enumerate() {
        let line = step.line;
        backend.step_started(line);
        let mut expect_ok = None;
        let mut got = None;
        let outcome = match &step.op {
            Op::Window { .. } => Outcome::Ok,
            Op::Expect { text } => {
                let last = trace.records.iter().rev().find(|r| r.expect_ok.is_none());
                let shown = last.map(|r| Shown { outcome: &r.outcome, window: base }.to_string()).unwrap_or_default();
                expect_ok = Some(shown == *text);
                got = (shown != *text).then_some(shown);
                Outcome::Ok
            }
            Op::Proc { name } => {
                acting = env.proc(line, name)?;
                Outcome::Ok
            }
            _ if !env.alive[acting] => Outcome::Errno(ESRCH),
            op => match to_call(&mut env, line, op, step.bind.is_some())? {
                Err(outcome) => {
                    // A mapping of a file that failed to open still binds
                    // its name, to MAP_FAILED, as a program's would.
                    if let (Some(name), Op::Mmap { .. }) = (&step.bind, op) {
                        env.names.insert(name.clone(), Value::Addr(MAP_FAILED));
                    }
                    outcome
                }
                Ok(call) => {
                    let outcome = match &call {
                        Call::Frame { addr } => same(backend, &env, acting, *addr, op, line)?,
                        Call::Device(d) if !backend.supports(d.needs()) => {
                            Outcome::Refused(format!("needs {}, which this executor lacks", d.needs()))
                        }
                        _ if crate::lang::uffd::needs_rwp(op) && !backend.supports(super::Capability::UffdRwp) => {
                            Outcome::Refused(format!("needs {}, which this executor lacks", super::Capability::UffdRwp))
                        }
                        Call::Device(d) if d.too_large() => Outcome::Refused(format!(
                            "more than {} pages in one device command",
                            super::device::MAX_DEVICE_PAGES
                        )),
                        Call::Pin(p) if !backend.supports(p.needs()) => {
                            Outcome::Refused(format!("needs {}, which this executor lacks", p.needs()))
                        }
                        Call::Pin(p) if p.too_large() => Outcome::Refused(format!(
                            "more than {} pages in one gup_test call",
                            super::pin::MAX_PIN_PAGES
                        )),
                        _ => backend.call(acting, &call),
                    };
                    bind(&mut env, step.bind.as_deref(), &call, &outcome, acting);
                    outcome
                }
            },
        };
        let invalidations = backend.take_invalidations(&env.procs);
        trace.records.push(crate::observe::Record {
            step: index,
            line,
            proc: env.procs[acting].clone(),
            text: print_step(step),
            outcome,
            invalidations,
            expect_ok,
            got,
        });
    }
    Ok(trace)
}

/// `same`: the frames behind both pages, compared within one executor
/// (frame numbers differ between executors, equality does not).
fn same(
    backend: &mut dyn Backend,
    env: &Env,
    acting: ProcId,
    addr: u64,
    op: &Op,
    line: usize,
) -> Result<Outcome, ExecError> {
    let Op::Same { other, other_addr, .. } = op else { unreachable!("Frame comes only from same") };
    let other = env.proc(line, other)?;
    let other_addr = env.addr(line, other_addr)?;
    if !env.alive[other] {
        return Ok(Outcome::Errno(ESRCH));
    }
    let mine = backend.call(acting, &Call::Frame { addr });
    let theirs = backend.call(other, &Call::Frame { addr: other_addr });
    Ok(match (mine, theirs) {
        (Outcome::Value(a), Outcome::Value(b)) => Outcome::Same(Some(a == b)),
        (bad @ (Outcome::Inconclusive(_) | Outcome::Refused(_)), _)
        | (_, bad @ (Outcome::Inconclusive(_) | Outcome::Refused(_))) => bad,
        _ => Outcome::Same(None),
    })
}

/// The call for an operation, or directly its outcome (a bad file).
fn to_call(env: &mut Env, line: usize, op: &Op, bound: bool) -> Result<Result<Call, Outcome>, ExecError> {
    let a = |e: &Expr| env.addr(line, e);
    let file = |name: &str| -> Result<Result<usize, Outcome>, ExecError> {
        Ok(env.file(line, name)?.ok_or(Outcome::Errno(EBADF)))
    };
    Ok(Ok(match op {
        Op::Mmap { addr, len, prot, flags, file: f } => {
            let (file, offset) = match f {
                None => (None, 0),
                Some((name, off)) => match file(name)? {
                    Ok(id) => (Some(id), a(off)?),
                    Err(outcome) => return Ok(Err(outcome)),
                },
            };
            Call::Mmap { addr: a(addr)?, len: a(len)?, prot: *prot, flags: *flags, file, offset }
        }
        Op::Munmap { addr, len } => Call::Munmap { addr: a(addr)?, len: a(len)? },
        Op::Mprotect { addr, len, prot } => Call::Mprotect { addr: a(addr)?, len: a(len)?, prot: *prot },
        Op::Madvise { addr, len, advice } => Call::Madvise { addr: a(addr)?, len: a(len)?, advice: *advice },
        Op::Mseal { addr, len } => Call::Mseal { addr: a(addr)?, len: a(len)? },
        Op::Mremap { old, old_len, new_len, flags, new_addr } => Call::Mremap {
            old: a(old)?,
            old_len: a(old_len)?,
            new_len: a(new_len)?,
            flags: *flags,
            new_addr: new_addr.as_ref().map(a).transpose()?.unwrap_or(0),
        },
        Op::Read { addr } if bound => Call::Access { id: env.accesses, addr: a(addr)?, write: None },
        Op::Write { addr, value } if bound => Call::Access { id: env.accesses, addr: a(addr)?, write: Some(*value) },
        Op::Read { addr } => Call::Read { addr: a(addr)? },
        Op::Write { addr, value } => Call::Write { addr: a(addr)?, value: *value },
        Op::AtomicAdd { addr, value } => Call::AtomicAdd { addr: a(addr)?, value: *value },
        Op::Cmpxchg { addr, old, new } => Call::Cmpxchg { addr: a(addr)?, old: *old, new: *new },
        Op::Fork => Call::Fork { child: env.procs.len() },
        Op::Exit => Call::Exit,
        Op::Memfd { name } => Call::Memfd { name: name.clone(), id: env.files },
        Op::Fwrite { file: f, offset, value } => match file(f)? {
            Ok(file) => Call::Fwrite { file, offset: a(offset)?, value: *value },
            Err(o) => return Ok(Err(o)),
        },
        Op::Pread { file: f, offset } => match file(f)? {
            Ok(file) => Call::Pread { file, offset: a(offset)? },
            Err(o) => return Ok(Err(o)),
        },
        Op::Ftruncate { file: f, size } => match file(f)? {
            Ok(file) => Call::Ftruncate { file, size: a(size)? },
            Err(o) => return Ok(Err(o)),
        },
        Op::Fallocate { file: f, offset, len, mode } => match file(f)? {
            Ok(file) => Call::Fallocate { file, offset: a(offset)?, len: a(len)?, mode: (*mode).into() },
            Err(o) => return Ok(Err(o)),
        },
        Op::Close { file: f } => match file(f)? {
            Ok(file) => Call::Close { file },
            Err(o) => return Ok(Err(o)),
        },
        Op::Maps { addr, len } => Call::Maps { addr: a(addr)?, len: a(len)? },
        Op::Pagemap { addr, len } => Call::Pagemap { addr: a(addr)?, len: a(len)? },
        Op::Same { addr, .. } => Call::Frame { addr: a(addr)? },
        Op::Userfaultfd { features } => Call::Userfaultfd { id: env.files, features: u64::from(*features) },
        Op::Uffd(op) => match file(op.uffd())? {
            Ok(uffd) => {
                let mut op = super::uffd::resolve(op, &a)?;
                if let (true, super::UffdCall::Read { fork_file }) = (bound, &mut op) {
                    *fork_file = Some(env.files);
                }
                Call::Uffd { uffd, op }
            }
            Err(o) => return Ok(Err(o)),
        },
        Op::Wait { access } => match env.names.get(access) {
            Some(Value::Access(id)) => Call::Wait { id: *id },
            _ => return Err(ExecError::Unbound { line, name: access.clone() }),
        },
        Op::Device(d) => match device_call(env, line, d)? {
            Ok(call) => Call::Device(call),
            Err(o) => return Ok(Err(o)),
        },
        Op::Pin(p) => match super::pin::resolve(p, env.files, &a, &file)? {
            Ok(call) => Call::Pin(call),
            Err(o) => return Ok(Err(o)),
        },
        Op::Smaps { addr } => Call::Smaps { addr: a(addr)? },
        Op::Window { .. } | Op::Expect { .. } | Op::Proc { .. } => unreachable!("handled by the caller"),
    }))
}

/// Binds the result of an operation to its name, and tracks processes
/// and files it created or ended.
fn bind(env: &mut Env, name: Option<&str>, call: &Call, outcome: &Outcome, acting: ProcId) {
    let value = match (call, outcome) {
        (Call::Mmap { .. } | Call::Mremap { .. }, Outcome::Addr(va)) => Some(Value::Addr(*va)),
        (Call::Mmap { .. } | Call::Mremap { .. }, _) => Some(Value::Addr(MAP_FAILED)),
        // A fork waiting for its FORK event to be read has a child already.
        (Call::Fork { child }, Outcome::Ok | Outcome::Blocked) => {
            env.procs.push(name.unwrap_or("child").to_string());
            env.alive.push(true);
            Some(Value::Proc(*child))
        }
        (Call::Memfd { id, .. }, Outcome::Ok) => {
            env.files += 1;
            Some(Value::File(Some(*id)))
        }
        (Call::Memfd { .. }, _) => Some(Value::File(None)),
        (Call::Userfaultfd { id, .. }, Outcome::Value(_)) => {
            env.files += 1;
            Some(Value::File(Some(*id)))
        }
        (Call::Userfaultfd { .. }, _) => Some(Value::File(None)),
        (Call::Uffd { op: super::UffdCall::Read { fork_file: Some(id) }, .. }, Outcome::Messages(msgs))
            if msgs.contains(&crate::observe::UffdMsgView::Fork) =>
        {
            env.files += 1;
            Some(Value::File(Some(*id)))
        }
        (Call::Uffd { op: super::UffdCall::Read { .. }, .. }, _) => Some(Value::File(None)),
        (Call::Access { id, .. }, _) => {
            env.accesses += 1;
            Some(Value::Access(*id))
        }
        (Call::Device(d), Outcome::Ok) if d.creates().is_some() => {
            env.files += 1;
            Some(Value::File(d.creates()))
        }
        (Call::Device(d), _) if d.creates().is_some() => Some(Value::File(None)),
        (Call::Pin(p), Outcome::Ok) if p.creates().is_some() => {
            env.files += 1;
            Some(Value::File(p.creates()))
        }
        (Call::Pin(p), _) if p.creates().is_some() => Some(Value::File(None)),
        (Call::Exit, _) => {
            env.alive[acting] = false;
            None
        }
        _ => None,
    };
    if let (Some(name), Some(value)) = (name, value) {
        env.names.insert(name.to_string(), value);
    }
}

/// The device or DAX call for `op`, or directly its outcome (a bad file);
/// `daxdir` only changes the setting (and is `Ok` itself).
fn device_call(env: &mut Env, line: usize, op: &DeviceOp) -> Result<Result<DeviceCall, Outcome>, ExecError> {
    let file = |name: &str| -> Result<Result<usize, Outcome>, ExecError> {
        Ok(env.file(line, name)?.ok_or(Outcome::Errno(EBADF)))
    };
    Ok(Ok(match op {
        DeviceOp::Open { minor } => DeviceCall::Open { minor: *minor, id: env.files },
        DeviceOp::DaxFile { name } => {
            DeviceCall::DaxFile { name: name.clone(), dir: env.dax_dir.clone(), id: env.files }
        }
        DeviceOp::DevDax => DeviceCall::DevDax { id: env.files },
        DeviceOp::DaxDir { path } => {
            env.dax_dir = path.clone();
            return Ok(Err(Outcome::Ok));
        }
        DeviceOp::Cmd { cmd, file: f, addr, npages } => match file(f)? {
            Ok(file) => DeviceCall::Cmd { file, cmd: *cmd, addr: env.addr(line, addr)?, npages: *npages },
            Err(o) => return Ok(Err(o)),
        },
        DeviceOp::Write { file: f, addr, npages, pattern } => match file(f)? {
            Ok(file) => DeviceCall::Write { file, addr: env.addr(line, addr)?, npages: *npages, pattern: *pattern },
            Err(o) => return Ok(Err(o)),
        },
        DeviceOp::Release { file: f } => match file(f)? {
            Ok(file) => DeviceCall::Release { file },
            Err(o) => return Ok(Err(o)),
        },
        DeviceOp::Flags { file: f, flags } => match file(f)? {
            Ok(file) => DeviceCall::Flags { file, flags: *flags },
            Err(o) => return Ok(Err(o)),
        },
    }))
}
