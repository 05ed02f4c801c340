//! Tests of the image as user data: what `format` refuses to overwrite,
//! what `mount` refuses to trust (one test per corruption, each on a valid
//! image with one field changed and its checksums resealed so the check
//! behind them is reached), the file lock, the operating system's errors,
//! and random damage that must never panic.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use hmm_types::{Errno, PageSize, PAGE_SIZE, PUD_SIZE};

use crate::devdax::DevDax;
use crate::fs::OpenMode;
use crate::testing::{kernel, temp_path};
use crate::{MmError, ThpMode};

use super::layout::{crc32, HEADER_LEN};
use super::{Corruption, DaxFs, FormatMode, Found, PmemError};

const MIB: u64 = 1 << 20;
const DEVICE: u64 = 8 * MIB;

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        Self(temp_path(name))
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
    fn write(&self, bytes: &[u8]) {
        std::fs::write(&self.0, bytes).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A valid image with files "a" (8 KiB, one extent) and "b" (5 bytes).
fn valid_image(name: &str) -> TempFile {
    let path = TempFile::new(name);
    let k = kernel(32, ThpMode::Never);
    let fs = DaxFs::format(&k, &path.0, DEVICE).unwrap();
    fs.create("a").unwrap().pwrite(0, &[0xaa; 8192]).unwrap();
    fs.create("b").unwrap().pwrite(0, b"hello").unwrap();
    fs.sync().unwrap();
    path
}

fn pmem_error(result: Result<DaxFs, MmError>) -> PmemError {
    match result {
        Err(MmError::Pmem(error)) => error,
        other => panic!("expected a pmem error, got {other:?}"),
    }
}

fn mount(path: &Path) -> Result<DaxFs, MmError> {
    DaxFs::mount(&kernel(32, ThpMode::Never), path, DEVICE)
}

/// Recomputes both checksums after an edit, so the edit itself is checked.
fn reseal(bytes: &mut [u8]) {
    let table_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    let end = HEADER_LEN.saturating_add(table_len).min(bytes.len());
    let table_crc = crc32(&bytes[HEADER_LEN..end]);
    bytes[32..36].copy_from_slice(&table_crc.to_le_bytes());
    let header_crc = crc32(&bytes[..60]);
    bytes[60..64].copy_from_slice(&header_crc.to_le_bytes());
}

// Table offsets of the valid image: count, then "a" (name length, name,
// size, extent count, one extent), then "b".
const COUNT: usize = HEADER_LEN;
const A_NAME: usize = COUNT + 4 + 2;
const A_SIZE: usize = A_NAME + 1;
const A_EXTENT: usize = A_SIZE + 8 + 4;
const B_NAME: usize = A_EXTENT + 24 + 2;

/// Mounts the valid image with `edit` applied (and resealed if `seal`).
fn corrupted(edit: impl FnOnce(&mut Vec<u8>), seal: bool) -> PmemError {
    let path = valid_image("corrupt.pmem");
    let mut bytes = path.bytes();
    edit(&mut bytes);
    if seal {
        reseal(&mut bytes);
    }
    path.write(&bytes);
    pmem_error(mount(&path.0))
}

fn corruption(edit: impl FnOnce(&mut Vec<u8>)) -> Corruption {
    match corrupted(edit, true) {
        error @ PmemError::Corrupt { .. } => {
            assert_eq!(error.errno(), Errno::Uclean, "{error}");
            let PmemError::Corrupt { what, .. } = error else { unreachable!() };
            what
        }
        other => panic!("expected a corrupt image, got {other}"),
    }
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn the_valid_image_mounts_with_its_files() {
    let path = valid_image("valid.pmem");
    let fs = mount(&path.0).unwrap();
    assert_eq!(fs.list(), ["a", "b"]);
    let a = fs.open("a", OpenMode::ReadOnly).unwrap();
    assert_eq!(a.size(), 8192);
    let mut buf = [0u8; 8192];
    a.pread(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xaa));
    assert_eq!(&path.bytes()[A_NAME..A_NAME + 1], b"a", "the offsets these tests edit");
    assert_eq!(&path.bytes()[B_NAME..B_NAME + 1], b"b");
}

#[test]
fn a_bad_magic_or_another_version_is_refused_by_name() {
    let error = corrupted(|b| b[..8].copy_from_slice(b"NOTMAGIC"), false);
    assert!(matches!(error, PmemError::NotAnImage { .. }), "{error}");
    assert_eq!(error.errno(), Errno::Inval);
    let error = corrupted(|b| b[8] = 3, true);
    assert!(matches!(error, PmemError::Version { found: 3, expected: 2, .. }), "{error}");
    let error = corrupted(|b| b[..8].copy_from_slice(b"HMMDAX01"), false);
    assert!(matches!(error, PmemError::Version { found: 1, .. }), "{error}");
}

#[test]
fn checksums_catch_unsealed_changes() {
    assert_eq!(corruption_unsealed(|b| b[20] ^= 1), Corruption::HeaderChecksum);
    let what = corruption_unsealed(|b| b[A_NAME] = b'z');
    assert!(matches!(what, Corruption::Checksum { .. }), "{what}");
}

fn corruption_unsealed(edit: impl FnOnce(&mut Vec<u8>)) -> Corruption {
    match corrupted(edit, false) {
        PmemError::Corrupt { what, .. } => what,
        other => panic!("expected a corrupt image, got {other}"),
    }
}

#[test]
fn counts_are_checked_before_anything_is_allocated() {
    let what = corruption(|b| b[COUNT..COUNT + 4].copy_from_slice(&u32::MAX.to_le_bytes()));
    assert!(matches!(what, Corruption::FileCount { count: u32::MAX, .. }), "{what}");
    let what = corruption(|b| b[A_SIZE + 8..A_SIZE + 12].copy_from_slice(&u32::MAX.to_le_bytes()));
    assert!(matches!(what, Corruption::ExtentCount { index: 0, count: u32::MAX }), "{what}");
    let what = corruption(|b| put_u64(b, 24, u64::MAX));
    assert!(matches!(what, Corruption::TableTooLarge { len: u64::MAX, .. }), "{what}");
}

#[test]
fn names_must_be_valid_and_unique() {
    let what = corruption(|b| b[B_NAME] = b'a');
    assert_eq!(what, Corruption::DuplicateName { name: "a".into() });
    assert_eq!(corruption(|b| b[A_NAME] = 0), Corruption::Name { index: 0, why: "contains a NUL byte" });
    assert_eq!(corruption(|b| b[A_NAME] = b'/'), Corruption::Name { index: 0, why: "contains '/'" });
    assert_eq!(corruption(|b| b[A_NAME] = 0xff), Corruption::Name { index: 0, why: "not UTF-8" });
}

#[test]
fn sizes_and_extents_are_checked_against_the_device_and_the_file() {
    let what = corruption(|b| put_u64(b, A_SIZE, u64::MAX));
    assert_eq!(what, Corruption::FileSize { name: "a".into(), size: u64::MAX });
    let why = |what: Corruption| match what {
        Corruption::Extent { why, .. } => why,
        other => panic!("expected a bad extent, got {other}"),
    };
    assert_eq!(why(corruption(|b| put_u64(b, A_EXTENT + 8, u64::MAX))), "overflows");
    assert_eq!(why(corruption(|b| put_u64(b, A_EXTENT, u64::MAX - 1))), "overflows");
    assert_eq!(
        why(corruption(|b| put_u64(b, A_EXTENT + 8, DEVICE / PAGE_SIZE))),
        "lies outside the device's data area"
    );
    assert_eq!(why(corruption(|b| put_u64(b, A_EXTENT + 8, 0))), "lies outside the device's data area");
    assert_eq!(why(corruption(|b| put_u64(b, A_EXTENT + 16, 0))), "is empty");
    assert_eq!(why(corruption(|b| put_u64(b, A_EXTENT + 16, 3))), "reaches past the end of the file");
    // "b"'s extent moved onto "a"'s first device page.
    let what = corruption(|b| {
        let a_dev = b[A_EXTENT + 8..A_EXTENT + 16].to_vec();
        let b_extent = B_NAME + 1 + 8 + 4;
        b[b_extent + 8..b_extent + 16].copy_from_slice(&a_dev);
    });
    assert!(matches!(what, Corruption::SharedBlock { .. }), "{what}");
}

#[test]
fn the_device_size_must_match_the_file_and_the_request() {
    let what = corruption(|b| put_u64(b, 16, 7));
    assert_eq!(what, Corruption::DeviceSize { pages: 7 });
    let error = corrupted(|b| put_u64(b, 16, 2 * DEVICE / PAGE_SIZE), true);
    assert_eq!(
        error,
        PmemError::Corrupt {
            path: error_path(&error),
            what: Corruption::Truncated { file_bytes: DEVICE, device_bytes: 2 * DEVICE }
        }
    );
    let path = valid_image("size.pmem");
    let error = pmem_error(DaxFs::mount(&kernel(32, ThpMode::Never), &path.0, 2 * DEVICE));
    assert!(matches!(error, PmemError::SizeMismatch { image_bytes: DEVICE, .. }), "{error}");
}

fn error_path(error: &PmemError) -> PathBuf {
    match error {
        PmemError::Corrupt { path, .. } => path.clone(),
        other => panic!("{other}"),
    }
}

#[test]
fn a_truncated_image_or_stray_bytes_are_refused() {
    let path = valid_image("short.pmem");
    let bytes = path.bytes();
    path.write(&bytes[..MIB as usize]);
    let what = match pmem_error(mount(&path.0)) {
        PmemError::Corrupt { what, .. } => what,
        other => panic!("{other}"),
    };
    assert_eq!(what, Corruption::Truncated { file_bytes: MIB, device_bytes: DEVICE });
    path.write(&bytes[..40]);
    assert!(matches!(pmem_error(mount(&path.0)), PmemError::NotAnImage { .. }), "a header cut short");
    let what = corruption(|b| {
        let len = u64::from_le_bytes(b[24..32].try_into().unwrap());
        put_u64(b, 24, len + 3);
    });
    assert_eq!(what, Corruption::TrailingBytes { extra: 3 });
    // The table's recorded end falls just before "b"'s name.
    let what = corruption(|b| put_u64(b, 24, (B_NAME - HEADER_LEN) as u64));
    assert_eq!(what, Corruption::TableTruncated);
}

#[test]
fn format_refuses_a_file_with_data_and_leaves_it_untouched() {
    let k = kernel(32, ThpMode::Never);
    let text = TempFile::new("notes.txt");
    text.write(b"someone's 23-byte notes");
    let error = pmem_error(DaxFs::format(&k, &text.0, DEVICE));
    assert!(matches!(error, PmemError::NotEmpty { len: 23, found: Found::Data, .. }), "{error}");
    assert_eq!(error.errno(), Errno::Exist);
    assert!(error.to_string().contains("--format"), "the message says how to overwrite: {error}");
    assert_eq!(text.bytes(), b"someone's 23-byte notes", "not grown, not written");
    assert!(matches!(pmem_error(DaxFs::mount(&k, &text.0, DEVICE)), PmemError::NotAnImage { .. }));
    assert!(matches!(pmem_error(DaxFs::mount_or_format(&k, &text.0, DEVICE)), PmemError::NotAnImage { .. }));
    assert_eq!(text.bytes(), b"someone's 23-byte notes");

    let data = TempFile::new("data.bin");
    let pattern: Vec<u8> = (0..DEVICE).map(|i| (i * 7 % 251) as u8).collect();
    data.write(&pattern);
    assert!(matches!(pmem_error(DaxFs::format(&k, &data.0, DEVICE)), PmemError::NotEmpty { found: Found::Data, .. }));
    assert!(data.bytes() == pattern, "a device-sized file of data is untouched");

    let image = valid_image("kept.pmem");
    let before = image.bytes();
    let error = pmem_error(DaxFs::format(&k, &image.0, DEVICE));
    assert!(matches!(error, PmemError::NotEmpty { found: Found::Image, .. }), "{error}");
    assert!(image.bytes() == before);
    let fs = DaxFs::format_with(&k, &image.0, DEVICE, FormatMode::Overwrite).unwrap();
    assert!(fs.list().is_empty(), "an explicit overwrite formats");
}

#[test]
fn format_and_mount_or_format_take_new_or_empty_files() {
    let k = kernel(32, ThpMode::Never);
    let empty = TempFile::new("empty.pmem");
    empty.write(b"");
    DaxFs::format(&k, &empty.0, DEVICE).unwrap().create("x").unwrap();
    let new = TempFile::new("new.pmem");
    let fs = DaxFs::mount_or_format(&k, &new.0, DEVICE).unwrap();
    fs.create("kept").unwrap();
    drop(fs);
    assert_eq!(DaxFs::mount_or_format(&k, &new.0, DEVICE).unwrap().list(), ["kept"], "the second call mounts");
}

#[test]
fn a_backing_file_in_use_is_refused() {
    let k = kernel(32, ThpMode::Never);
    let path = TempFile::new("locked.pmem");
    let fs = DaxFs::format(&k, &path.0, DEVICE).unwrap();
    let error = pmem_error(DaxFs::mount(&k, &path.0, DEVICE));
    assert!(matches!(error, PmemError::InUse { .. }), "{error}");
    assert_eq!(error.errno(), Errno::Busy);
    let error = pmem_error(DaxFs::format_with(&k, &path.0, DEVICE, FormatMode::Overwrite));
    assert!(matches!(error, PmemError::InUse { .. }), "even an explicit format waits its turn: {error}");
    match DevDax::create(&k, 2 * MIB, PageSize::Size2M, Some(&path.0)) {
        Err(MmError::Pmem(PmemError::InUse { .. })) => {}
        other => panic!("device-DAX on a locked file: {other:?}"),
    }
    drop(fs);
    mount(&path.0).expect("the lock goes with the device");
}

#[test]
fn open_errors_keep_the_system_error() {
    let k = kernel(32, ThpMode::Never);
    let missing = temp_path("missing.pmem");
    let error = pmem_error(DaxFs::mount(&k, &missing, DEVICE));
    assert_eq!(error.errno(), Errno::NoEnt);
    assert!(!missing.exists(), "mount does not create the file");
    let PmemError::Open { source, .. } = &error else { panic!("{error}") };
    assert_eq!(source.kind(), ErrorKind::NotFound);
    let chained = std::error::Error::source(&error).expect("the io::Error is the source").to_string();
    assert_eq!(chained, source.io().to_string());
    assert!(error.to_string().contains(&chained), "the message says why: {error}");

    let dir = std::env::temp_dir();
    assert_eq!(pmem_error(DaxFs::format(&k, &dir, DEVICE)).errno(), Errno::IsDir);
    let file = TempFile::new("plain");
    file.write(b"x");
    assert_eq!(pmem_error(DaxFs::format(&k, &file.0.join("below"), DEVICE)).errno(), Errno::NotDir);
    let error = pmem_error(DaxFs::format(&k, Path::new("/dev/null"), DEVICE));
    assert!(matches!(error, PmemError::NotAFile { .. }), "{error}");
    let small = pmem_error(DaxFs::format(&k, &temp_path("small.pmem"), 3 * MIB));
    assert!(matches!(small, PmemError::TooSmall { bytes: 3_145_728, .. }), "{small}");
}

#[test]
fn a_device_beyond_the_addressable_range_is_einval() {
    let k = kernel(32, ThpMode::Never);
    let error = DevDax::create(&k, 1 << 62, PageSize::Size1G, None).unwrap_err();
    assert!(matches!(error, MmError::Pmem(PmemError::TooLarge { bytes: 0x4000_0000_0000_0000, .. })), "{error}");
    assert_eq!(error.errno(), Errno::Inval);
    let path = temp_path("huge.pmem");
    let error = pmem_error(DaxFs::format(&k, &path, 1 << 62));
    assert!(matches!(error, PmemError::TooLarge { .. }), "{error}");
    assert!(!path.exists(), "nothing created for a refused size");
    assert!(DevDax::create(&k, PUD_SIZE, PageSize::Size1G, None).is_ok());
}

/// Whatever the damage, mount returns: a consistent filesystem (the same
/// files on a second mount, every file readable) or an error.
fn mount_survives(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = TempFile::new("fuzz.pmem");
    path.write(bytes);
    let first = match mount(&path.0) {
        Ok(fs) => fs,
        Err(MmError::Pmem(_)) => return Ok(()),
        Err(other) => return Err(TestCaseError::fail(format!("not a pmem error: {other}"))),
    };
    let listed: Vec<(String, u64)> =
        first.list().into_iter().map(|n| (n.clone(), first.open(&n, OpenMode::ReadOnly).unwrap().size())).collect();
    for (name, size) in &listed {
        let mut buf = vec![0u8; (*size).min(3 * PAGE_SIZE) as usize];
        first.open(name, OpenMode::ReadOnly).unwrap().pread(0, &mut buf).unwrap();
    }
    drop(first);
    let again = mount(&path.0).map_err(|e| TestCaseError::fail(format!("second mount: {e}")))?;
    let relisted: Vec<(String, u64)> =
        again.list().into_iter().map(|n| (n.clone(), again.open(&n, OpenMode::ReadOnly).unwrap().size())).collect();
    prop_assert_eq!(listed, relisted);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_damage_never_panics(
        flips in proptest::collection::vec((0usize..256, any::<u8>()), 1..6),
        seal in any::<bool>(),
        cut in proptest::option::of(0u64..DEVICE + 1),
    ) {
        let path = valid_image("fuzz-source.pmem");
        let mut bytes = path.bytes();
        for (at, value) in flips {
            bytes[at] ^= value;
        }
        if seal && bytes[..8] == *b"HMMDAXFS" {
            reseal(&mut bytes);
        }
        if let Some(cut) = cut {
            bytes.truncate(cut as usize);
        }
        mount_survives(&bytes)?;
    }
}
