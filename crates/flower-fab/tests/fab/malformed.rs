//! Damaged and unusual FABs, derived from a real `flwr build` output: this
//! crate must refuse exactly those that flwr's node side refuses
//! (`get_fab_config`, which the SuperNode runs to fuse the run config, and
//! `install_from_fab`, which `flwr-clientapp` runs before loading the app).

use std::io::{Cursor, Read, Write};

use bytes::Bytes;
use flower_fab::{Fab, FabError, FAB_CONTENT_FILE, FAB_MAX_SIZE};
use serde_json::json;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use crate::{arg, built, python_json};

/// Prints `{"ok": true}` if flwr accepts the FAB at `argv[1]`, else the
/// error.
const FLWR_ACCEPTS: &str = r#"
import json, sys, tempfile
from pathlib import Path
from flwr.cli.install import install_from_fab
from flwr.common.config import get_fab_config
from flwr.common.constant import FAB_MAX_SIZE
fab = open(sys.argv[1], "rb").read()
try:
    if len(fab) > FAB_MAX_SIZE:
        raise ValueError("too large")
    get_fab_config(fab)
    with tempfile.TemporaryDirectory() as d:
        install_from_fab(fab, install_dir=Path(d), skip_prompt=True)
    print(json.dumps({"ok": True, "max": FAB_MAX_SIZE}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}", "max": FAB_MAX_SIZE}))
"#;

/// The members of a FAB, in order.
fn members(fab: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(Cursor::new(fab)).expect("zip");
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).expect("member");
            let mut data = Vec::new();
            f.read_to_end(&mut data).expect("read member");
            (f.name().to_owned(), data)
        })
        .collect()
}

/// Writes `files` as a FAB; with `manifest`, (re)writes `.info/CONTENT` for
/// every other file, as `flwr build` does.
fn write(files: &[(String, Vec<u8>)], manifest: bool) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    let mut lines = Vec::new();
    for (name, data) in files {
        if manifest && name == FAB_CONTENT_FILE {
            continue;
        }
        zip.start_file(name.as_str(), options).expect("start file");
        zip.write_all(data).expect("write member");
        lines.push(format!(
            "{name},{},{}",
            hex::encode(Sha256::digest(data)),
            data.len() * 8
        ));
    }
    if manifest {
        zip.start_file(FAB_CONTENT_FILE, options)
            .expect("start CONTENT");
        zip.write_all(lines.join("\n").as_bytes())
            .expect("write CONTENT");
    }
    zip.finish().expect("finish zip").into_inner()
}

/// `pyproject.toml` of `files`, edited by `edit`.
fn with_pyproject(files: &[(String, Vec<u8>)], edit: impl Fn(&str) -> String) -> Vec<u8> {
    let edited: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, d)| {
            if n == "pyproject.toml" {
                let text = std::str::from_utf8(d).expect("utf-8");
                (n.clone(), edit(text).into_bytes())
            } else {
                (n.clone(), d.clone())
            }
        })
        .collect();
    write(&edited, true)
}

/// A `fab-format-version = 1` FAB with a root `LICENSE` and the given `flwr`
/// requirement.
fn v1(files: &[(String, Vec<u8>)], flwr_requirement: &str) -> Vec<u8> {
    let mut files = files.to_vec();
    files.insert(1, ("LICENSE".into(), b"Apache-2.0\n".to_vec()));
    with_pyproject(&files, |t| {
        t.replace(
            "[tool.flwr.app]\n",
            "[tool.flwr.app]\nfab-format-version = 1\nflwr-version-target = \"1.42.0\"\n",
        )
        .replace(
            "license = \"Apache-2.0\"",
            "license = { file = \"LICENSE\" }",
        )
        .replace("\"flwr>=1.42.0\"", &format!("\"{flwr_requirement}\""))
    })
}

#[test]
fn accepts_and_refuses_what_flwr_does() {
    let Some(built) = built() else { return };
    let original = std::fs::read(&built.modern).expect("read FAB");
    let files = members(&original);

    let tampered: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, d)| {
            let mut d = d.clone();
            if n.ends_with("client_app.py") {
                d.extend_from_slice(b"\n# tampered\n");
            }
            (n.clone(), d)
        })
        .collect();
    let without_manifest: Vec<_> = files
        .iter()
        .filter(|(n, _)| n != FAB_CONTENT_FILE)
        .cloned()
        .collect();
    let mut unlisted_extra = files.clone();
    unlisted_extra.insert(1, ("extra/notes.md".into(), b"not in CONTENT".to_vec()));
    let mut traversal = files.clone();
    traversal.push(("../evil.py".into(), b"print('x')".to_vec()));
    // Incompressible (xorshift) so the zip really exceeds the limit.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let big_filler: Vec<u8> = (0..FAB_MAX_SIZE + 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut too_large = files.clone();
    too_large.push(("big.json".into(), big_filler));

    // (name, FAB bytes, what we expect of this crate)
    type Check = fn(&Result<Fab, FabError>) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("original", original.clone(), |r| r.is_ok()),
        ("rewritten", write(&files, true), |r| r.is_ok()),
        ("unlisted extra file", write(&unlisted_extra, false), |r| {
            r.is_ok()
        }),
        ("tampered file", write(&tampered, false), |r| {
            matches!(
                r,
                Err(FabError::ContentMismatch {
                    actual: Some(_),
                    ..
                })
            )
        }),
        (
            "no CONTENT",
            write(&without_manifest, false),
            |r| matches!(r, Err(FabError::MissingFile { name }) if name == FAB_CONTENT_FILE),
        ),
        ("zip slip", write(&traversal, true), |r| {
            matches!(r, Err(FabError::UnsafePath { .. }))
        }),
        ("not a zip", b"PK\x03\x04 nothing".to_vec(), |r| {
            matches!(r, Err(FabError::Zip(_)))
        }),
        ("too large", write(&too_large, true), |r| {
            matches!(r, Err(FabError::TooLarge { .. }))
        }),
        (
            "no clientapp",
            with_pyproject(&files, |t| t.replace("clientapp = ", "# clientapp = ")),
            |r| matches!(r, Err(FabError::InvalidConfig { errors }) if errors.iter().any(|e| e.contains("\"clientapp\" missing"))),
        ),
        (
            "agentapp only",
            with_pyproject(&files, |t| {
                t.replace("serverapp = ", "agentapp = ")
                    .replace("clientapp = ", "# c = ")
            }),
            |r| matches!(r, Ok(f) if f.components().is_agentapp_bundle()),
        ),
        (
            "no publisher",
            with_pyproject(&files, |t| t.replace("publisher = ", "# publisher = ")),
            |r| matches!(r, Err(FabError::InvalidConfig { .. })),
        ),
        (
            "component without attribute",
            with_pyproject(&files, |t| {
                t.replace("modern_app.client_app:app", "modern_app.client_app")
            }),
            |r| matches!(r, Err(FabError::InvalidConfig { errors }) if errors[0].contains("Missing attribute")),
        ),
        (
            "list in config",
            with_pyproject(&files, |t| t.replace("lr = 0.1", "lr = [0.1, 0.2]")),
            |r| matches!(r, Err(FabError::InvalidConfigValue { key, found: "array" }) if key == "lr"),
        ),
        (
            "fab-format-version 2",
            with_pyproject(&files, |t| {
                t.replace(
                    "[tool.flwr.app]\n",
                    "[tool.flwr.app]\nfab-format-version = 2\n",
                )
            }),
            |r| matches!(r, Err(FabError::InvalidConfig { errors }) if errors[0].contains("Unsupported")),
        ),
        (
            "fab-format-version 1 without license file",
            with_pyproject(&files, |t| {
                t.replace(
                    "[tool.flwr.app]\n",
                    "[tool.flwr.app]\nfab-format-version = 1\nflwr-version-target = \"1.42.0\"\n",
                )
            }),
            |r| matches!(r, Err(FabError::InvalidConfig { .. })),
        ),
        (
            "fab-format-version 1, complete",
            v1(&files, "flwr>=1.42.0"),
            |r| matches!(r, Ok(f) if f.fab_format_version() == 1),
        ),
        (
            "fab-format-version 1 without a >= bound",
            v1(&files, "flwr==1.42.0"),
            |r| matches!(r, Err(FabError::InvalidConfig { errors }) if errors[0].contains(">=")),
        ),
        (
            "bad TOML",
            with_pyproject(&files, |t| format!("{t}\n[[[")),
            |r| matches!(r, Err(FabError::Toml { .. })),
        ),
    ];

    let dir = tempfile::TempDir::new().expect("temp dir");
    for (name, bytes, expect) in cases {
        let path = dir.path().join("case.fab");
        std::fs::write(&path, &bytes).expect("write case");
        let ours = Fab::from_bytes(Bytes::from(bytes));
        assert!(expect(&ours), "{name}: unexpected result {ours:?}");
        let Some(theirs) = python_json(FLWR_ACCEPTS, &[arg(&path)]) else {
            return;
        };
        assert_eq!(theirs["max"], json!(FAB_MAX_SIZE));
        assert_eq!(
            theirs["ok"],
            json!(ours.is_ok()),
            "{name}: flwr says {theirs}, we say {ours:?}"
        );
    }
}
