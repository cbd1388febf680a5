//! The global model as an `.npz` file (what `np.savez(path, *arrays)` writes:
//! entries `arr_0.npy`, `arr_1.npy`, ...).
//!
//! Parameters already hold one `.npy` file per tensor, so they are stored as
//! archive entries byte for byte, without decoding; the `zip` crate does the
//! archive. Tensors of another `tensor_type` (e.g. XGBoost JSON bytes) are
//! wrapped as 1-d `uint8` arrays so the file stays a valid `.npz`.

use std::io::{Read, Seek, Write};
use std::path::Path;

use bytes::Bytes;
use flower_core::npy::{npy_header, parse_npy};
use flower_core::{DType, Parameters, NUMPY_TENSOR_TYPE};
use sha2::Digest as _;

use crate::{ModelFileError, ServerError};

/// Serializes parameters as `.npz` bytes.
pub fn parameters_to_npz(parameters: &Parameters) -> Result<Vec<u8>, ModelFileError> {
    parameters_to_npz_named(parameters, None)
}

/// Serializes parameters as `.npz` bytes with these entry names (what
/// `np.savez(path, **arrays)` writes; `names` must have one per tensor,
/// otherwise `arr_0`, `arr_1`, ... are used).
pub fn parameters_to_npz_named(
    parameters: &Parameters,
    names: Option<&[String]>,
) -> Result<Vec<u8>, ModelFileError> {
    // Sized up front: growing a buffer of a 40 MB model by doubling copies
    // it about twice over.
    let capacity = parameters.byte_len() + parameters.tensors.len() * 256 + 1024;
    let out = std::io::Cursor::new(Vec::with_capacity(capacity));
    Ok(write_npz_named(parameters, names, out)?.into_inner())
}

/// Writes parameters as an `.npz` archive into `out` (a file, say, so the
/// model is never assembled in memory) and returns it; entry names as
/// [`parameters_to_npz_named`].
pub fn write_npz_named<W: Write + Seek>(
    parameters: &Parameters,
    names: Option<&[String]>,
    out: W,
) -> Result<W, ModelFileError> {
    let names = names.filter(|n| n.len() == parameters.tensors.len());
    let mut zip = zip::ZipWriter::new(out);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(parameters.byte_len() > (u32::MAX as usize) / 2);
    for (i, tensor) in parameters.tensors.iter().enumerate() {
        let name = names.map_or_else(|| format!("arr_{i}"), |n| n[i].clone());
        zip.start_file(format!("{name}.npy"), options)?;
        if parameters.tensor_type == NUMPY_TENSOR_TYPE {
            zip.write_all(tensor)?;
        } else {
            zip.write_all(&npy_header(DType::U8, &[tensor.len()]))?;
            zip.write_all(tensor)?;
        }
    }
    Ok(zip.finish()?)
}

/// The fingerprint of an `.npz` archive: SHA-256 (hex) over each entry's
/// name, size and CRC-32 as its central directory records them, in archive
/// order. It ties a checkpoint to the model file it wrote without hashing
/// the model: zip checks every entry's data against its CRC-32 as it is
/// read, so a file whose data changed fails to load, and one whose
/// directory differs has another fingerprint.
pub fn npz_fingerprint<R: Read + Seek>(archive: R) -> Result<String, ModelFileError> {
    let mut archive = zip::ZipArchive::new(archive)?;
    let mut hasher = sha2::Sha256::new();
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index)?;
        let name = entry.name().as_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(entry.size().to_le_bytes());
        hasher.update(entry.crc32().to_le_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads parameters from an `.npz` file: entries `arr_N.npy` in numeric
/// order (what `np.savez(path, *arrays)` writes), otherwise archive order.
/// Every entry must be a valid `.npy` of a supported dtype. With a
/// `tensor_type` other than `numpy.ndarray`, the `uint8` wrapping is undone.
pub fn parameters_from_npz(path: &Path, tensor_type: &str) -> Result<Parameters, ServerError> {
    read_npz_named(path, tensor_type).map(|(parameters, _)| parameters)
}

/// Like [`parameters_from_npz`], also returning the entry names (without
/// `.npy`) in the same order as the tensors.
pub fn read_npz_named(
    path: &Path,
    tensor_type: &str,
) -> Result<(Parameters, Vec<String>), ServerError> {
    let bad = |source: ModelFileError| ServerError::ModelFile {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.into()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.into()))?;
    let mut entries: Vec<(Option<u64>, String, Bytes)> = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| bad(e.into()))?;
        let name = entry.name().to_string();
        let stem = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let number = stem
            .strip_prefix("arr_")
            .and_then(|n| n.parse::<u64>().ok());
        // Sized from the entry's header so a 40 MB array takes 40 MB, not the
        // 64 MB a doubling buffer ends at; capped so a lying header cannot
        // reserve more than it delivers (read_to_end grows past it if needed).
        let declared = usize::try_from(entry.size()).unwrap_or(usize::MAX);
        let mut data = Vec::with_capacity(declared.min(1 << 30));
        entry.read_to_end(&mut data).map_err(|e| bad(e.into()))?;
        let view = parse_npy(&data).map_err(|source| {
            bad(ModelFileError::Npy {
                entry: name.clone(),
                source,
            })
        })?;
        let tensor = if tensor_type == NUMPY_TENSOR_TYPE {
            Bytes::from(data)
        } else {
            Bytes::copy_from_slice(view.data)
        };
        entries.push((number, stem, tensor));
    }
    if entries.iter().all(|(n, _, _)| n.is_some()) {
        entries.sort_by_key(|(n, _, _)| *n);
    }
    let (names, tensors) = entries.into_iter().map(|(_, name, t)| (name, t)).unzip();
    Ok((
        Parameters {
            tensors,
            tensor_type: tensor_type.to_string(),
        },
        names,
    ))
}
