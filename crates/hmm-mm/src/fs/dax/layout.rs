//! The on-media format of the DAX filesystem's metadata, written to the
//! device's first 2 MiB on every change so a later run can mount it.
//!
//! A 64-byte header, little-endian: magic `HMMDAXFS`, format version,
//! reserved zeros, the device's size in 4 KiB pages, the length and CRC-32
//! of the table, and last the CRC-32 of the header's first 60 bytes. The
//! table follows: a file count, then per file its name (length-prefixed
//! UTF-8), size, and `(file page, device page, pages)` extents.
//!
//! Decoding trusts nothing: every count is checked against the bytes that
//! could hold it before anything is allocated, every extent against the
//! device's data area and the file's size, every name for validity and
//! uniqueness. Version 1 (magic `HMMDAX01`, no checksums) is recognised
//! only to be refused by name.

use std::collections::HashSet;

use hmm_types::PAGE_SIZE;

use super::error::Corruption;

const MAGIC: &[u8; 8] = b"HMMDAXFS";
const MAGIC_V1: &[u8; 8] = b"HMMDAX01";
/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 2;
/// Bytes of the header.
pub(crate) const HEADER_LEN: usize = 64;
use crate::fs::MAX_LFS_FILESIZE as MAX_FILE_BYTES;
/// Smallest encoded file record: name length, a 1-byte name, size, extent count.
const MIN_RECORD: usize = 2 + 1 + 8 + 4;
const EXTENT_BYTES: usize = 3 * 8;

/// One file as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileRecord {
    pub(crate) name: String,
    pub(crate) size: u64,
    /// `(file page, device page, pages)` runs, sorted by file page.
    pub(crate) extents: Vec<(u64, u64, u64)>,
}

/// What the first bytes of a backing file are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Probe {
    /// An image of [`VERSION`].
    Image,
    /// An image of another version.
    OtherVersion(u32),
    /// Anything else.
    Data,
}

/// Classifies a file by its first bytes (fewer than a header is `Data`).
pub(crate) fn probe(first: &[u8]) -> Probe {
    if first.len() >= 8 && &first[..8] == MAGIC_V1 {
        return Probe::OtherVersion(1);
    }
    if first.len() < HEADER_LEN || &first[..8] != MAGIC {
        return Probe::Data;
    }
    match le_u32(&first[8..12]) {
        VERSION => Probe::Image,
        other => Probe::OtherVersion(other),
    }
}

/// A decoded header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Header {
    /// Size of the device in 4 KiB pages.
    pub(crate) device_pages: u64,
    /// Length of the table that follows the header.
    pub(crate) table_len: u64,
    table_crc: u32,
}

/// Checks the header of a [`Probe::Image`]: its checksum and reserved bytes.
pub(crate) fn decode_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, Corruption> {
    if crc32(&bytes[..60]) != le_u32(&bytes[60..]) {
        return Err(Corruption::HeaderChecksum);
    }
    if bytes[12..16].iter().chain(&bytes[40..60]).any(|&b| b != 0) {
        return Err(Corruption::HeaderReserved);
    }
    Ok(Header {
        device_pages: le_u64(&bytes[16..24]),
        table_len: le_u64(&bytes[24..32]),
        table_crc: le_u32(&bytes[32..36]),
    })
}

/// Serializes a device of `device_pages` with these files: header, table.
pub(crate) fn encode(device_pages: u64, files: &[FileRecord]) -> Vec<u8> {
    let mut table = Vec::new();
    table.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for file in files {
        table.extend_from_slice(&(file.name.len() as u16).to_le_bytes());
        table.extend_from_slice(file.name.as_bytes());
        table.extend_from_slice(&file.size.to_le_bytes());
        table.extend_from_slice(&(file.extents.len() as u32).to_le_bytes());
        for &(file_page, dev_page, pages) in &file.extents {
            for value in [file_page, dev_page, pages] {
                table.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + table.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&device_pages.to_le_bytes());
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&table).to_le_bytes());
    out.resize(60, 0);
    let header_crc = crc32(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&table);
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Corruption> {
        if self.0.len() < n {
            return Err(Corruption::TableTruncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, Corruption> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Corruption> {
        self.take(4).map(le_u32)
    }
    fn u64(&mut self) -> Result<u64, Corruption> {
        self.take(8).map(le_u64)
    }
}

/// Parses and validates the table of a device of `device_pages` pages
/// whose first `meta_pages` hold the metadata.
pub(crate) fn decode(header: &Header, table: &[u8], meta_pages: u64) -> Result<Vec<FileRecord>, Corruption> {
    let computed = crc32(table);
    if computed != header.table_crc {
        return Err(Corruption::Checksum { stored: header.table_crc, computed });
    }
    let mut reader = Reader(table);
    let count = reader.u32()?;
    if count as usize > reader.0.len() / MIN_RECORD {
        return Err(Corruption::FileCount { count, table_bytes: table.len() });
    }
    let mut files = Vec::with_capacity(count as usize);
    let mut names = HashSet::new();
    for index in 0..count {
        let name_len = reader.u16()? as usize;
        let name = check_name(index, reader.take(name_len)?)?;
        if !names.insert(name.clone()) {
            return Err(Corruption::DuplicateName { name });
        }
        let size = reader.u64()?;
        if size > MAX_FILE_BYTES {
            return Err(Corruption::FileSize { name, size });
        }
        let nr_extents = reader.u32()?;
        if nr_extents as usize > reader.0.len() / EXTENT_BYTES {
            return Err(Corruption::ExtentCount { index, count: nr_extents });
        }
        let mut extents = Vec::with_capacity(nr_extents as usize);
        for _ in 0..nr_extents {
            let extent = (reader.u64()?, reader.u64()?, reader.u64()?);
            let previous_end = extents.last().map(|&(f, _, n): &(u64, u64, u64)| f + n);
            check_extent(&name, extent, previous_end, size, header.device_pages, meta_pages)?;
            extents.push(extent);
        }
        files.push(FileRecord { name, size, extents });
    }
    if !reader.0.is_empty() {
        return Err(Corruption::TrailingBytes { extra: reader.0.len() });
    }
    check_disjoint(&files)?;
    Ok(files)
}

fn check_name(index: u32, bytes: &[u8]) -> Result<String, Corruption> {
    let why = if bytes.is_empty() {
        "empty"
    } else if bytes.len() > 255 {
        "longer than 255 bytes"
    } else if bytes.contains(&0) {
        "contains a NUL byte"
    } else if bytes.contains(&b'/') {
        "contains '/'"
    } else {
        return String::from_utf8(bytes.to_vec()).map_err(|_| Corruption::Name { index, why: "not UTF-8" });
    };
    Err(Corruption::Name { index, why })
}

fn check_extent(
    name: &str,
    (file_page, dev_page, pages): (u64, u64, u64),
    previous_end: Option<u64>,
    size: u64,
    device_pages: u64,
    meta_pages: u64,
) -> Result<(), Corruption> {
    let fail = |why| Err(Corruption::Extent { name: name.to_string(), file_page, dev_page, pages, why });
    let (Some(file_end), Some(dev_end)) = (file_page.checked_add(pages), dev_page.checked_add(pages)) else {
        return fail("overflows");
    };
    if pages == 0 {
        fail("is empty")
    } else if dev_page < meta_pages || dev_end > device_pages {
        fail("lies outside the device's data area")
    } else if file_end > size.div_ceil(PAGE_SIZE) {
        fail("reaches past the end of the file")
    } else if previous_end.is_some_and(|end| file_page < end) {
        fail("is out of order or overlaps the file's previous extent")
    } else {
        Ok(())
    }
}

/// No device page in two extents (of one file or of two).
fn check_disjoint(files: &[FileRecord]) -> Result<(), Corruption> {
    let mut runs: Vec<(u64, u64, &str)> =
        files.iter().flat_map(|f| f.extents.iter().map(move |&(_, d, n)| (d, d + n, f.name.as_str()))).collect();
    runs.sort_unstable();
    for pair in runs.windows(2) {
        let ((_, end, first), (start, _, second)) = (pair[0], pair[1]);
        if start < end {
            return Err(Corruption::SharedBlock { page: start, first: first.to_string(), second: second.to_string() });
        }
    }
    Ok(())
}

/// Coalesces a sorted `file page → device page` map into runs.
pub(crate) fn extents_of(pages: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64, u64)> {
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for (file_page, dev_page) in pages {
        match runs.last_mut() {
            Some((f, d, n)) if *f + *n == file_page && *d + *n == dev_page => *n += 1,
            _ => runs.push((file_page, dev_page, 1)),
        }
    }
    runs
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and ext4's `crc32_le` compute it).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| (crc >> 8) ^ TABLE[((crc ^ b as u32) & 0xff) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: u64 = 512;

    fn decode_all(bytes: &[u8]) -> Result<Vec<FileRecord>, Corruption> {
        let header = decode_header(bytes[..HEADER_LEN].try_into().unwrap())?;
        decode(&header, &bytes[HEADER_LEN..], META)
    }

    #[test]
    fn round_trip() {
        let files = vec![
            FileRecord { name: "a".into(), size: 5000, extents: vec![(0, 512, 2)] },
            FileRecord { name: "big".into(), size: 4 << 20, extents: vec![(0, 1024, 512), (512, 2048, 512)] },
        ];
        let bytes = encode(4096, &files);
        assert_eq!(probe(&bytes), Probe::Image);
        let header = decode_header(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!((header.device_pages, header.table_len), (4096, (bytes.len() - HEADER_LEN) as u64));
        assert_eq!(decode_all(&bytes).unwrap(), files);
    }

    #[test]
    fn probe_tells_data_versions_and_images_apart() {
        assert_eq!(probe(b""), Probe::Data);
        assert_eq!(probe(b"hello, world: a text file\n"), Probe::Data);
        assert_eq!(probe(&[0; 64]), Probe::Data);
        assert_eq!(probe(b"HMMDAX01\x10\0\0\0\0\0\0\0"), Probe::OtherVersion(1));
        let mut v3 = encode(1024, &[]);
        v3[8] = 3;
        assert_eq!(probe(&v3), Probe::OtherVersion(3));
    }

    #[test]
    fn crc32_is_the_standard_one() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    proptest::proptest! {
        /// A valid table with random bytes overwritten, sealed with valid
        /// checksums so the decoder reads it: an error or a table that
        /// passes every check, never a panic.
        #[test]
        fn decoding_damaged_tables_never_panics(
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..400,
        ) {
            let files = vec![
                FileRecord { name: "a".into(), size: 5000, extents: vec![(0, 512, 2)] },
                FileRecord { name: "bb".into(), size: 4 << 20, extents: vec![(0, 1024, 512), (512, 2048, 512)] },
                FileRecord { name: "c".into(), size: 0, extents: vec![] },
            ];
            let mut table = encode(4096, &files)[HEADER_LEN..].to_vec();
            for (at, value) in flips {
                let len = table.len();
                table[at % len] = value;
            }
            table.truncate(table.len().min(cut.max(4)));
            let header = Header { device_pages: 4096, table_len: table.len() as u64, table_crc: crc32(&table) };
            if let Ok(files) = decode(&header, &table, META) {
                for file in &files {
                    proptest::prop_assert!(file.size <= MAX_FILE_BYTES);
                    for &(_, dev, n) in &file.extents {
                        proptest::prop_assert!(n > 0 && dev >= META && dev + n <= 4096);
                    }
                }
            }
        }
    }

    #[test]
    fn runs_coalesce() {
        assert_eq!(extents_of([(0, 10), (1, 11), (2, 20), (5, 21)]), [(0, 10, 2), (2, 20, 1), (5, 21, 1)]);
    }
}
