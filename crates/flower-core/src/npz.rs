//! `.npz` model files: a zip archive of `.npy` entries, as `numpy.savez` and
//! `numpy.savez_compressed` write them.
//!
//! The zip container is handled by the [`zip`] crate; only the `.npy`
//! entries are decoded here (with [`crate::npy`]). `ndarray-npy` was not used
//! because it supports neither Flower's `f16`/`bool` [`NdArray`] enum nor the
//! hardened header parser of [`crate::npy`].
//!
//! * [`read_npz`] returns `(key, array)` pairs in archive order; the key is the
//!   entry name without `.npy` (`arr_0`, `arr_1`, ... for `np.savez(*arrays)`).
//! * [`read_npz_ordered`] returns just the arrays in model order: numeric
//!   order of `arr_N` when every key has that form, archive order otherwise.
//! * [`write_npz`] / [`write_npz_compressed`] write named arrays;
//!   [`write_npz_arrays`] writes `arr_0, arr_1, ...` like `np.savez(*arrays)`.
//!   Files are written to a temporary sibling and renamed into place, so a
//!   reader never sees a half-written model.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::npy::{decode_npy, encode_npy_into, CodecError};
use crate::NdArray;

/// Largest buffer reserved up front for one entry; bigger entries grow as
/// their data actually arrives, so a forged size field cannot force a huge
/// allocation.
const MAX_INITIAL_RESERVE: u64 = 256 << 20;

/// How entries of a written archive are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NpzCompression {
    /// Uncompressed, like `numpy.savez` (the default).
    #[default]
    Stored,
    /// Deflate, like `numpy.savez_compressed`.
    Deflated,
}

/// Reads every array of the `.npz` file at `path`, in archive order. Keys are
/// entry names without the `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NdArray)>, CodecError> {
    read_npz_from(BufReader::new(File::open(path)?))
}

/// Reads every array of an `.npz` archive from `reader`, in archive order.
/// Directory entries are skipped; an entry that is not a valid `.npy` buffer
/// is an error ([`CodecError::NpzEntry`]).
pub fn read_npz_from(reader: impl Read + Seek) -> Result<Vec<(String, NdArray)>, CodecError> {
    let mut archive = ZipArchive::new(reader)?;
    let mut out = Vec::with_capacity(archive.len());
    let mut buf = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_owned();
        let declared = entry.size();
        let array =
            read_entry(&mut entry, declared, &mut buf).map_err(|e| CodecError::NpzEntry {
                name: name.clone(),
                source: Box::new(e),
            })?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_owned();
        out.push((key, array));
    }
    Ok(out)
}

/// Reads and decodes one archive entry, reusing `buf`.
fn read_entry(
    entry: &mut impl Read,
    declared: u64,
    buf: &mut Vec<u8>,
) -> Result<NdArray, CodecError> {
    buf.clear();
    buf.reserve(usize::try_from(declared.min(MAX_INITIAL_RESERVE)).unwrap_or(0));
    // Read at most the declared size, then probe for the end of the entry:
    // the zip crate checks the CRC only when a read returns 0.
    entry.by_ref().take(declared).read_to_end(buf)?;
    let mut probe = [0u8; 1];
    if entry.read(&mut probe)? != 0 {
        return Err(CodecError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "entry is longer than its declared size",
        )));
    }
    decode_npy(buf)
}

/// Reads the arrays of a model file at `path` in model order (see
/// [`order_npz_arrays`]).
pub fn read_npz_ordered(path: &Path) -> Result<Vec<NdArray>, CodecError> {
    Ok(order_npz_arrays(read_npz(path)?))
}

/// Puts the entries of an `.npz` in model order: when every key is `arr_N`
/// (what `np.savez(*arrays)` writes) the arrays are sorted by `N`
/// numerically (`arr_2` before `arr_10`); otherwise archive order is kept.
pub fn order_npz_arrays(mut entries: Vec<(String, NdArray)>) -> Vec<NdArray> {
    let index = |key: &str| -> Option<u64> {
        let digits = key.strip_prefix("arr_")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    if entries.iter().all(|(k, _)| index(k).is_some()) {
        // Stable sort; keys were all checked above.
        entries.sort_by_key(|(k, _)| index(k).unwrap_or(u64::MAX));
    }
    entries.into_iter().map(|(_, a)| a).collect()
}

/// Writes named arrays to `path` as an uncompressed `.npz` (like
/// `numpy.savez(path, **arrays)`); each entry is `<name>.npy`.
pub fn write_npz(path: &Path, arrays: &[(String, NdArray)]) -> Result<(), CodecError> {
    write_npz_file(path, arrays, NpzCompression::Stored)
}

/// Writes named arrays to `path` as a deflate-compressed `.npz` (like
/// `numpy.savez_compressed`).
pub fn write_npz_compressed(path: &Path, arrays: &[(String, NdArray)]) -> Result<(), CodecError> {
    write_npz_file(path, arrays, NpzCompression::Deflated)
}

/// Writes `arrays` to `path` under the keys `arr_0, arr_1, ...`, exactly like
/// `numpy.savez(path, *arrays)`.
pub fn write_npz_arrays(path: &Path, arrays: &[NdArray]) -> Result<(), CodecError> {
    let named: Vec<(String, NdArray)> = arrays
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("arr_{i}"), a.clone()))
        .collect();
    write_npz(path, &named)
}

/// Writes an `.npz` archive to `writer` and returns the writer.
///
/// Duplicate names are refused (as a [`CodecError::Zip`] error).
pub fn write_npz_to<W: Write + Seek>(
    writer: W,
    arrays: &[(String, NdArray)],
    compression: NpzCompression,
) -> Result<W, CodecError> {
    let mut zip = ZipWriter::new(writer);
    let method = match compression {
        NpzCompression::Stored => CompressionMethod::Stored,
        NpzCompression::Deflated => CompressionMethod::Deflated,
    };
    let mut buf = Vec::new();
    for (name, array) in arrays {
        buf.clear();
        encode_npy_into(array, &mut buf);
        // Zip64 extra fields only when an entry needs them (numpy's readers
        // handle both).
        let large = u64::try_from(buf.len()).map_or(true, |n| n >= u64::from(u32::MAX));
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .large_file(large);
        zip.start_file(format!("{name}.npy"), options)?;
        zip.write_all(&buf)?;
    }
    Ok(zip.finish()?)
}

fn write_npz_file(
    path: &Path,
    arrays: &[(String, NdArray)],
    compression: NpzCompression,
) -> Result<(), CodecError> {
    let tmp = temp_sibling(path);
    let result = (|| -> Result<(), CodecError> {
        let file = File::create(&tmp)?;
        let mut w = write_npz_to(BufWriter::new(file), arrays, compression)?;
        w.flush()?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `<dir>/.<file name>.tmp-<pid>`, next to `path` so the rename is atomic.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
