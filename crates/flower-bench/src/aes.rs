//! Single-core AES-GCM throughput of this machine, the ceiling a TLS
//! server's bulk data path is compared against.

use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use serde::Serialize;

/// Size of the buffer sealed per pass.
const BUFFER: usize = 64 << 20;
/// TLS's maximum record payload.
const RECORD: usize = 16 << 10;

/// Measured sealing throughput.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AesResult {
    /// `"AES-256-GCM"` or `"AES-128-GCM"`.
    pub(crate) algorithm: &'static str,
    /// Bytes sealed.
    pub(crate) bytes: u64,
    /// Seconds spent.
    pub(crate) seconds: f64,
    /// `bytes / seconds`.
    pub(crate) bytes_per_s: f64,
}

/// Seals 64 MiB in 16 KiB records (one nonce per record, as TLS does) on
/// the calling thread, pass after pass, for at least `min_time`.
pub(crate) fn measure(aes256: bool, min_time: Duration) -> AesResult {
    let (alg, name, key_len) = if aes256 {
        (&AES_256_GCM, "AES-256-GCM", 32)
    } else {
        (&AES_128_GCM, "AES-128-GCM", 16)
    };
    let key_bytes: Vec<u8> = (0..key_len).map(|i| i as u8 ^ 0x5a).collect();
    let key = LessSafeKey::new(UnboundKey::new(alg, &key_bytes).expect("valid key length"));
    let mut buf = vec![0x42u8; BUFFER];
    let mut counter: u64 = 0;
    let mut sealed: u64 = 0;
    // One untimed pass to fault the pages in and warm the caches.
    let pass = |buf: &mut [u8], counter: &mut u64| {
        for record in buf.chunks_mut(RECORD) {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            *counter += 1;
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    record,
                )
                .expect("seal");
            let _ = std::hint::black_box(tag);
        }
    };
    pass(&mut buf, &mut counter);
    let started = Instant::now();
    while started.elapsed() < min_time {
        pass(&mut buf, &mut counter);
        sealed += BUFFER as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    AesResult {
        algorithm: name,
        bytes: sealed,
        seconds,
        bytes_per_s: sealed as f64 / seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_something() {
        let r = measure(false, Duration::from_millis(1));
        assert!(r.bytes >= BUFFER as u64);
        assert!(r.bytes_per_s > 0.0);
    }
}
