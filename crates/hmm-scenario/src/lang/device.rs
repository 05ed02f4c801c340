//! The device and DAX operations of the language: opening a test device
//! (`d = dmirror N`), its ioctl commands (`dm_read d ADDR NPAGES`...), and
//! files on an fs-dax mount (`daxdir PATH`, `f = daxfile NAME`).
//!
//! Linux: `lib/test_hmm_uapi.h` (the commands), `tools/testing/selftests/mm/hmm-tests.c`
//! (how a program drives them); fs-dax files are ordinary files of a
//! filesystem mounted with `-o dax`.

use serde::{Deserialize, Serialize};

use super::ast::{Expr, Name};
use super::lex::{self, Token};
use super::ParseError;

/// A test-device command that takes an address and a page count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevCmd {
    /// `HMM_DMIRROR_READ`.
    Read,
    /// `HMM_DMIRROR_MIGRATE_TO_DEV`.
    MigrateToDev,
    /// `HMM_DMIRROR_MIGRATE_TO_SYS`.
    MigrateToSys,
    /// `HMM_DMIRROR_SNAPSHOT`.
    Snapshot,
    /// `HMM_DMIRROR_EXCLUSIVE`.
    Exclusive,
    /// `HMM_DMIRROR_CHECK_EXCLUSIVE`.
    CheckExclusive,
    /// `HMM_DMIRROR_READ_UNLOCKED` (7.3).
    ReadUnlocked,
}

impl DevCmd {
    /// Every command with its keyword.
    pub const ALL: [(Self, &'static str); 7] = [
        (Self::Read, "dm_read"),
        (Self::MigrateToDev, "dm_migrate_to_dev"),
        (Self::MigrateToSys, "dm_migrate_to_sys"),
        (Self::Snapshot, "dm_snapshot"),
        (Self::Exclusive, "dm_exclusive"),
        (Self::CheckExclusive, "dm_check_exclusive"),
        (Self::ReadUnlocked, "dm_read_unlocked"),
    ];

    /// The keyword of the command.
    pub fn keyword(self) -> &'static str {
        Self::ALL.iter().find(|(c, _)| *c == self).map_or("dm_read", |(_, k)| k)
    }

    /// Whether the command copies page data back to the caller's buffer
    /// (READ, READ_UNLOCKED, and the two that read back what they took).
    pub fn returns_data(self) -> bool {
        matches!(self, Self::Read | Self::ReadUnlocked | Self::MigrateToDev | Self::Exclusive)
    }
}

/// The bytes `dm_write` hands the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pattern {
    /// `fill:0xNN`: every byte the same.
    Fill(u8),
    /// `index`: 32-bit little-endian words counting from 0, as the
    /// kernel's selftests fill their buffers.
    Index,
}

impl Pattern {
    /// The pattern's bytes for `len` bytes.
    pub fn bytes(self, len: usize) -> Vec<u8> {
        match self {
            Self::Fill(b) => vec![b; len],
            Self::Index => (0..len).map(|i| ((i / 4) as u32).to_le_bytes()[i % 4]).collect(),
        }
    }
}

/// A device or DAX operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOp {
    /// `dmirror N`: open `/dev/hmm_dmirrorN` in the acting process.
    Open { minor: u64 },
    /// `dm_CMD FILE ADDR NPAGES`.
    Cmd { cmd: DevCmd, file: Name, addr: Expr, npages: u64 },
    /// `dm_write FILE ADDR NPAGES PATTERN`.
    Write { file: Name, addr: Expr, npages: u64, pattern: Pattern },
    /// `dm_release FILE`: `HMM_DMIRROR_RELEASE`.
    Release { file: Name },
    /// `dm_flags FILE FLAGS`: `HMM_DMIRROR_FLAGS` (`fail_alloc` or a number).
    Flags { file: Name, flags: u64 },
    /// `daxdir PATH`: where later `daxfile`s are created on the host (a
    /// directory on a filesystem mounted with `-o dax`; `/mnt/dax` if unset).
    DaxDir { path: String },
    /// `daxfile NAME`: creates an empty file on the fs-dax mount.
    DaxFile { name: String },
    /// `devdax`: opens the device-DAX character device
    /// ([`DEFAULT_DEVDAX`]) read-write; `mmap ... fd x OFFSET` maps it.
    DevDax,
}

/// The DAX directory a scenario uses when it names none (the reference
/// guest's mount point).
pub const DEFAULT_DAX_DIR: &str = "/mnt/dax";

/// The device-DAX node `devdax` opens: the reference guest links its
/// `/dev/daxN.0` (256 MiB, 2 MiB alignment) there (kernel-lab/guest-init).
pub const DEFAULT_DEVDAX: &str = "/dev/hmm-devdax";

/// `HMM_DMIRROR_FLAG_*` by name.
pub const DMIRROR_FLAGS: [(u32, &str); 1] = [(1, "fail_alloc")];

impl DeviceOp {
    /// The keyword that starts the line.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Open { .. } => "dmirror",
            Self::Cmd { cmd, .. } => cmd.keyword(),
            Self::Write { .. } => "dm_write",
            Self::Release { .. } => "dm_release",
            Self::Flags { .. } => "dm_flags",
            Self::DaxDir { .. } => "daxdir",
            Self::DaxFile { .. } => "daxfile",
            Self::DevDax => "devdax",
        }
    }

    /// Whether `name = ...` may bind its result (a file).
    pub fn binds(&self) -> bool {
        matches!(self, Self::Open { .. } | Self::DaxFile { .. } | Self::DevDax)
    }

    /// The arguments after the keyword, in canonical spelling.
    pub fn print_args(&self) -> Vec<String> {
        let hex = |n: u64| format!("{n:#x}");
        match self {
            Self::Open { minor } => vec![minor.to_string()],
            Self::Cmd { file, addr, npages, .. } => vec![file.clone(), super::print::expr(addr), hex(*npages)],
            Self::Write { file, addr, npages, pattern } => {
                let pattern = match pattern {
                    Pattern::Fill(b) => format!("fill:{b:#x}"),
                    Pattern::Index => "index".into(),
                };
                vec![file.clone(), super::print::expr(addr), hex(*npages), pattern]
            }
            Self::Release { file } => vec![file.clone()],
            Self::Flags { file, flags } => {
                let named =
                    u32::try_from(*flags).map_or_else(|_| hex(*flags), |f| super::print::bits(f, &DMIRROR_FLAGS));
                vec![file.clone(), named]
            }
            Self::DaxDir { path } => vec![path.clone()],
            Self::DaxFile { name } => vec![name.clone()],
            Self::DevDax => vec![],
        }
    }
}

fn name(tok: Token<'_>, what: &str) -> Result<Name, ParseError> {
    if lex::is_name(tok.text) {
        Ok(tok.text.to_string())
    } else {
        Err(ParseError::at(tok.col, format!("expected {what}, found `{}`", tok.text)))
    }
}

fn pattern(tok: Token<'_>) -> Result<Pattern, ParseError> {
    if tok.text == "index" {
        return Ok(Pattern::Index);
    }
    let Some(byte) = tok.text.strip_prefix("fill:") else {
        return Err(ParseError::at(
            tok.col,
            format!("expected a pattern (`index` or `fill:0xNN`), found `{}`", tok.text),
        ));
    };
    let value = lex::number(Token { text: byte, col: tok.col + 5 })?;
    u8::try_from(value).map(Pattern::Fill).map_err(|_| ParseError::at(tok.col + 5, "a fill byte is 0..=0xff".into()))
}

/// Parses the device operation `keyword` from `take` (which yields the
/// next argument or a "needs WHAT" error); `None` if the keyword is not one.
pub(super) fn parse<'a>(
    keyword: &str,
    take: &mut dyn FnMut(&str) -> Result<Token<'a>, ParseError>,
) -> Option<Result<DeviceOp, ParseError>> {
    let cmd = DevCmd::ALL.iter().find(|(_, k)| *k == keyword).map(|(c, _)| *c);
    let known = cmd.is_some()
        || matches!(keyword, "dmirror" | "dm_write" | "dm_release" | "dm_flags" | "daxdir" | "daxfile" | "devdax");
    if !known {
        return None;
    }
    let mut op = || -> Result<DeviceOp, ParseError> {
        Ok(match keyword {
            "dmirror" => DeviceOp::Open { minor: lex::number(take("a device number")?)? },
            "dm_write" => DeviceOp::Write {
                file: name(take("a device file")?, "a device file")?,
                addr: lex::expr(take("an address")?)?,
                npages: lex::number(take("a page count")?)?,
                pattern: pattern(take("a pattern")?)?,
            },
            "dm_release" => DeviceOp::Release { file: name(take("a device file")?, "a device file")? },
            "dm_flags" => DeviceOp::Flags {
                file: name(take("a device file")?, "a device file")?,
                flags: lex::bits(take("flags")?, &DMIRROR_FLAGS, "dmirror flag")? as u64,
            },
            "daxdir" => {
                let tok = take("a directory")?;
                if !tok.text.starts_with('/') {
                    return Err(ParseError::at(
                        tok.col,
                        format!("`daxdir` needs an absolute path, found `{}`", tok.text),
                    ));
                }
                DeviceOp::DaxDir { path: tok.text.to_string() }
            }
            "daxfile" => DeviceOp::DaxFile { name: name(take("a file name")?, "a file name")? },
            "devdax" => DeviceOp::DevDax,
            _ => DeviceOp::Cmd {
                cmd: cmd.expect("a command keyword"),
                file: name(take("a device file")?, "a device file")?,
                addr: lex::expr(take("an address")?)?,
                npages: lex::number(take("a page count")?)?,
            },
        })
    };
    Some(op())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::ast::Op;
    use crate::lang::{parse, print};

    #[test]
    fn device_lines_parse_and_print_back() {
        let text = "daxdir /mnt/dax\n\
                    f = daxfile seed\n\
                    x = devdax\n\
                    d = dmirror 2\n\
                    dm_read d w+0x1000 0x4\n\
                    dm_write d w 0x2 fill:0xab\n\
                    dm_write d w 0x2 index\n\
                    dm_migrate_to_dev d w 0x1\n\
                    dm_migrate_to_sys d w 0x1\n\
                    dm_snapshot d w 0x10\n\
                    dm_exclusive d w 0x1\n\
                    dm_check_exclusive d w 0x1\n\
                    dm_release d\n\
                    dm_flags d fail_alloc\n\
                    dm_flags d 0x0\n\
                    dm_read_unlocked d w 0x1\n";
        let s = parse("t", text).unwrap();
        assert_eq!(s.steps[3].bind.as_deref(), Some("d"));
        assert_eq!(s.steps[2].op, Op::Device(DeviceOp::DevDax));
        assert_eq!(s.steps[3].op, Op::Device(DeviceOp::Open { minor: 2 }));
        assert_eq!(print(&s), text);
    }

    #[test]
    fn bad_device_lines_say_why() {
        let e = parse("t", "dm_write d w 1 fill:0x100\n").unwrap_err();
        assert!(e.message.contains("0..=0xff"), "{e}");
        let e = parse("t", "dm_write d w 1 zeros\n").unwrap_err();
        assert_eq!(e.col, 16);
        assert!(parse("t", "daxdir mnt\n").unwrap_err().message.contains("absolute"));
        assert!(parse("t", "x = dm_release d\n").unwrap_err().message.contains("no result"));
        assert!(parse("t", "dm_read d w\n").unwrap_err().message.contains("needs a page count"));
        assert!(parse("t", "devdax\n").is_ok(), "a device-DAX node need not be named");
    }

    #[test]
    fn patterns_fill_their_bytes() {
        assert_eq!(Pattern::Fill(7).bytes(3), [7, 7, 7]);
        assert_eq!(Pattern::Index.bytes(9), [0, 0, 0, 0, 1, 0, 0, 0, 2]);
    }
}
