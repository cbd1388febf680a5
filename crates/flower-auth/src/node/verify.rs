//! Checking the signed timestamp every Fleet request carries.

use std::time::SystemTime;

use base64::Engine as _;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::NodeAuthError;
use super::key::NodePublicKey;
use super::{
    GRPC_PUBLIC_KEY_HEADER, GRPC_SIGNATURE_HEADER, MAX_TIMESTAMP_AGE, MAX_TIMESTAMP_SKEW,
    PUBLIC_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

/// Authenticates a Fleet HTTP request (flwr ≥ 1.40) from its headers, as
/// flwr's `superlink/routers/fleet/node_auth.py` does:
///
/// * `flwr-public-key`: base64 of the PEM SubjectPublicKeyInfo;
/// * `flwr-timestamp`: `datetime.now(UTC).isoformat()`, e.g.
///   `2026-11-27T17:35:32.994008+00:00`;
/// * `flwr-signature`: base64 of the DER ECDSA signature with SHA-256 over
///   the timestamp's ASCII bytes.
///
/// The timestamp must satisfy `-5 s < now - timestamp < 305 s`. Returns the
/// key that signed; the caller still checks that it matches the request
/// (`public_key` of Register/ActivateNode, or the node id bound to it).
///
/// # Errors
/// The first check that fails, in this order: missing / non-ASCII header,
/// bad base64, bad key, bad timestamp, outside the window, malformed or
/// wrong signature.
pub fn verify_node_request(
    headers: &http::HeaderMap,
    now: SystemTime,
) -> Result<NodePublicKey, NodeAuthError> {
    let public_key = decode_b64(PUBLIC_KEY_HEADER, header_str(headers, PUBLIC_KEY_HEADER)?)?;
    let signature = decode_b64(SIGNATURE_HEADER, header_str(headers, SIGNATURE_HEADER)?)?;
    let timestamp = header_str(headers, TIMESTAMP_HEADER)?;
    verify_node_signature_raw(&public_key, timestamp.as_bytes(), &signature, now)
}

/// Authenticates a ≤ 1.39 gRPC Fleet call from its metadata values:
/// `flwr-public-key-bin` (raw PEM bytes), `flwr-timestamp` (as for HTTP)
/// and `flwr-signature-bin` (raw DER). Same checks as
/// [`verify_node_request`] (which decodes its headers and calls this).
///
/// # Errors
/// As [`verify_node_request`]; a non-ASCII timestamp is
/// [`NodeAuthError::InvalidHeader`].
pub fn verify_node_signature_raw(
    public_key_pem: &[u8],
    timestamp: &[u8],
    signature_der: &[u8],
    now: SystemTime,
) -> Result<NodePublicKey, NodeAuthError> {
    let key = NodePublicKey::from_pem_bytes(public_key_pem)?;
    let timestamp = std::str::from_utf8(timestamp)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or(NodeAuthError::InvalidHeader {
            header: TIMESTAMP_HEADER,
        })?;
    verify_signed_timestamp(&key, timestamp, signature_der, now)?;
    Ok(key)
}

/// Authenticates a ≤ 1.39 gRPC Fleet call from its metadata map
/// (`flwr-public-key-bin`, `flwr-timestamp`, `flwr-signature-bin`).
///
/// # Errors
/// As [`verify_node_signature_raw`], plus
/// [`NodeAuthError::MissingHeader`] / [`NodeAuthError::InvalidBase64`] for
/// absent or undecodable binary entries.
pub fn verify_grpc_node_metadata(
    metadata: &tonic::metadata::MetadataMap,
    now: SystemTime,
) -> Result<NodePublicKey, NodeAuthError> {
    let binary = |name: &'static str| {
        metadata
            .get_bin(name)
            .ok_or(NodeAuthError::MissingHeader { header: name })?
            .to_bytes()
            .map_err(|_| NodeAuthError::InvalidHeader { header: name })
    };
    let public_key = binary(GRPC_PUBLIC_KEY_HEADER)?;
    let signature = binary(GRPC_SIGNATURE_HEADER)?;
    let timestamp = metadata
        .get(TIMESTAMP_HEADER)
        .ok_or(NodeAuthError::MissingHeader {
            header: TIMESTAMP_HEADER,
        })?
        .to_str()
        .map_err(|_| NodeAuthError::InvalidHeader {
            header: TIMESTAMP_HEADER,
        })?;
    verify_node_signature_raw(&public_key, timestamp.as_bytes(), &signature, now)
}

/// The shared core: parses `timestamp`, checks the window against `now`,
/// then verifies `signature_der` (ECDSA, SHA-256) over the timestamp's
/// bytes with `key`.
///
/// # Errors
/// [`NodeAuthError::InvalidTimestamp`],
/// [`NodeAuthError::TimestampOutsideWindow`],
/// [`NodeAuthError::MalformedSignature`], [`NodeAuthError::BadSignature`].
pub fn verify_signed_timestamp(
    key: &NodePublicKey,
    timestamp: &str,
    signature_der: &[u8],
    now: SystemTime,
) -> Result<(), NodeAuthError> {
    let signed_at = parse_timestamp(timestamp)?;
    let age = OffsetDateTime::from(now) - signed_at;
    let min = -time::Duration::try_from(MAX_TIMESTAMP_SKEW).unwrap_or(time::Duration::ZERO);
    let max = time::Duration::try_from(MAX_TIMESTAMP_AGE).unwrap_or(time::Duration::ZERO);
    // Strict on both ends, as flwr's `-5 < age < 305`.
    if !(min < age && age < max) {
        let age_ms = i64::try_from(age.whole_milliseconds()).unwrap_or(if age.is_negative() {
            i64::MIN
        } else {
            i64::MAX
        });
        return Err(NodeAuthError::TimestampOutsideWindow { age_ms });
    }
    key.verify_sha256(timestamp.as_bytes(), signature_der)
}

/// Parses Python's `datetime.isoformat()` of an aware date-time (RFC 3339:
/// with or without fractional seconds, offset required). A naive timestamp
/// is refused, as flwr's comparison with an aware `now()` raises.
fn parse_timestamp(timestamp: &str) -> Result<OffsetDateTime, NodeAuthError> {
    OffsetDateTime::parse(timestamp, &Rfc3339)
        .map_err(|source| NodeAuthError::InvalidTimestamp { source })
}

/// Python's `datetime.now(UTC).isoformat()` for `now`
/// (`YYYY-MM-DDTHH:MM:SS.ffffff+00:00`; the fraction is always written).
pub(crate) fn format_timestamp(now: SystemTime) -> String {
    let t = OffsetDateTime::from(now);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn header_str<'h>(
    headers: &'h http::HeaderMap,
    name: &'static str,
) -> Result<&'h str, NodeAuthError> {
    headers
        .get(name)
        .ok_or(NodeAuthError::MissingHeader { header: name })?
        .to_str()
        .map_err(|_| NodeAuthError::InvalidHeader { header: name })
}

fn decode_b64(name: &'static str, value: &str) -> Result<Vec<u8>, NodeAuthError> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|source| NodeAuthError::InvalidBase64 {
            header: name,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_round_trip_and_parse_like_python() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_800_932_994_008);
        let text = format_timestamp(now);
        assert_eq!(text, "2026-11-27T17:35:32.994008+00:00");
        assert_eq!(
            parse_timestamp(&text).unwrap(),
            OffsetDateTime::from(now),
            "microseconds kept"
        );
        // Python omits the fraction when microsecond == 0.
        assert!(parse_timestamp("2026-11-27T17:35:32+00:00").is_ok());
        assert!(parse_timestamp("2026-11-27T18:35:32.5+01:00").is_ok());
        assert!(
            parse_timestamp("2026-11-27T17:35:32.994008").is_err(),
            "naive"
        );
        assert!(parse_timestamp("yesterday").is_err());
    }
}
