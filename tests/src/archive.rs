//! Application package archives for the tests, built in memory: a
//! gzip-compressed tar or a zip, from (name, mode, bytes) entries.

use std::io::Write;

/// A regular file of an archive.
pub struct Entry<'a> {
    pub name: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

pub fn tar_gz(entries: &[Entry<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        b.append_data(&mut h, e.name, e.data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A tar.gz holding a FIFO (which no package may hold).
pub fn tar_gz_with_fifo() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_data(&mut h, "pipe", std::io::empty()).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

pub fn zip(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for e in entries {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(e.mode);
        z.start_file(e.name, opts).unwrap();
        z.write_all(e.data).unwrap();
    }
    z.finish().unwrap().into_inner()
}
