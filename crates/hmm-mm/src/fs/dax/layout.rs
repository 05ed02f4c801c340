//! The on-media format of the DAX filesystem's metadata: a magic, then the
//! file table (name, size, extents) in little-endian, written to the
//! device's first 2 MiB on every change so a later run can mount it.

use crate::error::MmError;

const MAGIC: &[u8; 8] = b"HMMDAX01";

/// One file as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileRecord {
    pub(crate) name: String,
    pub(crate) size: u64,
    /// `(file page, device page, pages)` runs.
    pub(crate) extents: Vec<(u64, u64, u64)>,
}

/// Serializes the table, magic and length first.
pub(crate) fn encode(files: &[FileRecord]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for file in files {
        body.extend_from_slice(&(file.name.len() as u16).to_le_bytes());
        body.extend_from_slice(file.name.as_bytes());
        body.extend_from_slice(&file.size.to_le_bytes());
        body.extend_from_slice(&(file.extents.len() as u32).to_le_bytes());
        for &(file_page, dev_page, pages) in &file.extents {
            for value in [file_page, dev_page, pages] {
                body.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The payload length announced by a header, or `None` without the magic.
pub(crate) fn payload_len(header: &[u8; 16]) -> Option<u64> {
    (&header[..8] == MAGIC).then(|| u64::from_le_bytes(header[8..].try_into().expect("8 bytes")))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MmError> {
        if self.0.len() < n {
            return Err(MmError::Io("corrupt DAX metadata: truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, MmError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, MmError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, MmError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// Parses the payload that follows the header.
pub(crate) fn decode(payload: &[u8]) -> Result<Vec<FileRecord>, MmError> {
    let mut reader = Reader(payload);
    let count = reader.u32()?;
    let mut files = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = reader.u16()? as usize;
        let name = String::from_utf8(reader.take(name_len)?.to_vec())
            .map_err(|_| MmError::Io("corrupt DAX metadata: file name"))?;
        let size = reader.u64()?;
        let nr_extents = reader.u32()?;
        let extents = (0..nr_extents)
            .map(|_| Ok((reader.u64()?, reader.u64()?, reader.u64()?)))
            .collect::<Result<_, MmError>>()?;
        files.push(FileRecord { name, size, extents });
    }
    Ok(files)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let files = vec![
            FileRecord { name: "a".into(), size: 5000, extents: vec![(0, 512, 2)] },
            FileRecord { name: "big".into(), size: 4 << 20, extents: vec![(0, 1024, 512), (512, 2048, 512)] },
        ];
        let bytes = encode(&files);
        let header: [u8; 16] = bytes[..16].try_into().unwrap();
        let len = payload_len(&header).unwrap() as usize;
        assert_eq!(decode(&bytes[16..16 + len]).unwrap(), files);
        assert!(payload_len(&[0; 16]).is_none());
        assert!(decode(&bytes[16..20]).is_err(), "truncated metadata is an error, not a panic");
    }

    #[test]
    fn runs_coalesce() {
        assert_eq!(extents_of([(0, 10), (1, 11), (2, 20), (5, 21)]), [(0, 10, 2), (2, 20, 1), (5, 21, 1)]);
    }
}
