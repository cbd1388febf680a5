//! flower-core: the `.npy`/`.npz` codec and grpc-bidi `ClientMessage`s.

use std::io::Cursor;

use flower_core::npy::{decode_npy, encode_npy, parse_npy};
use flower_core::npz::{read_npz_from, write_npz_to, NpzCompression};
use flower_core::{parameters_to_ndarrays, ClientMessage, ReplyKind};
use prost::Message as _;

/// `parse_npy` then `to_ndarray` of one `.npy` buffer (what the server does
/// with every tensor of a client's `Parameters`). Oracle: the view is
/// self-consistent and a decoded array re-encodes byte-stably.
pub fn npy(data: &[u8]) {
    let Ok(view) = parse_npy(data) else { return };
    assert_eq!(view.data.len(), view.len() * view.dtype.size());
    let Ok(array) = view.to_ndarray() else { return };
    assert_eq!(array.shape(), view.shape.as_slice());
    assert_eq!(array.dtype(), view.dtype);
    let encoded = encode_npy(&array);
    let again = decode_npy(&encoded).expect("our own .npy encoding decodes");
    assert_eq!(encode_npy(&again), encoded, "re-encoding is not stable");
}

/// `read_npz_from` over arbitrary archive bytes (a model file or FAB
/// handed to the server). Oracle: what was read writes back and reads back
/// to the same names and arrays.
pub fn npz(data: &[u8]) {
    let Ok(entries) = read_npz_from(Cursor::new(data)) else {
        return;
    };
    let arrays = flower_core::npz::order_npz_arrays(entries.clone());
    assert_eq!(arrays.len(), entries.len());
    // Duplicate entry names read fine but are refused by the writer.
    let Ok(written) = write_npz_to(Cursor::new(Vec::new()), &entries, NpzCompression::Stored)
    else {
        return;
    };
    let reread = read_npz_from(Cursor::new(written.into_inner())).expect("our own .npz reads");
    assert_eq!(reread.len(), entries.len());
    for ((k1, a1), (k2, a2)) in entries.iter().zip(&reread) {
        assert_eq!(k1, k2);
        assert_eq!(encode_npy(a1), encode_npy(a2));
    }
}

/// What the server's round driver does with a reply it waits for of kind
/// `expected` (mirrors `flower_server::driver::reply::classify`, which is
/// crate-private): the right kind with an OK status is a result, anything
/// else a failure; fit and get-parameters results then have their tensors
/// decoded.
fn classify(message: &ClientMessage, expected: ReplyKind) -> bool {
    let status = match (message, expected) {
        (ClientMessage::Fit(r), ReplyKind::Fit) => &r.status,
        (ClientMessage::Evaluate(r), ReplyKind::Evaluate) => &r.status,
        (ClientMessage::GetParameters(r), ReplyKind::GetParameters) => &r.status,
        (ClientMessage::GetProperties(r), ReplyKind::GetProperties) => &r.status,
        // A disconnect carries no status: never a usable result.
        (ClientMessage::Disconnect(_), ReplyKind::Disconnect) => return false,
        (m, _) => {
            assert_ne!(m.kind(), expected, "kind() disagrees with the variant");
            return false;
        }
    };
    assert_eq!(
        message.kind(),
        expected,
        "kind() disagrees with the variant"
    );
    if !status.is_ok() {
        return false;
    }
    match message {
        ClientMessage::Fit(r) => parameters_to_ndarrays(&r.parameters).is_ok(),
        ClientMessage::GetParameters(r) => parameters_to_ndarrays(&r.parameters).is_ok(),
        _ => true,
    }
}

/// Protobuf decode of a `flwr.proto.ClientMessage`, conversion to
/// [`ClientMessage`] and reply classification for every expected kind.
/// Oracle: exactly one kind matches, and typed → proto → typed is stable.
pub fn client_message(data: &[u8]) {
    let Ok(raw) = flower_proto::ClientMessage::decode(data) else {
        return;
    };
    let Ok(message) = ClientMessage::try_from(raw) else {
        return;
    };
    let kinds = [
        ReplyKind::Disconnect,
        ReplyKind::GetProperties,
        ReplyKind::GetParameters,
        ReplyKind::Fit,
        ReplyKind::Evaluate,
    ];
    assert_eq!(kinds.iter().filter(|&&k| message.kind() == k).count(), 1);
    for kind in kinds {
        classify(&message, kind);
    }
    let kind = message.kind();
    let bytes = flower_proto::ClientMessage::from(message).encode_to_vec();
    let again =
        flower_proto::ClientMessage::decode(bytes.as_slice()).expect("our own encoding decodes");
    let again = ClientMessage::try_from(again).expect("our own message converts");
    assert_eq!(again.kind(), kind);
    assert_eq!(
        flower_proto::ClientMessage::from(again).encode_to_vec(),
        bytes,
        "typed -> proto -> typed is not stable"
    );
}
