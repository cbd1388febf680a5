//! Replays the shared golden vectors (checked byte-identical against flwr).

use flower_message::{Limits, ObjectTree, Payload};

use crate::common::{
    check_deflate, check_inflate, golden_dir, id, inline_objects, read_json, str_of,
};

#[test]
fn every_shared_golden_vector_round_trips_byte_for_byte() {
    let dir = golden_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.json vectors in {}", dir.display());
    let mut cases = 0;
    let mut objects_checked = 0;
    for file in &files {
        let vectors = read_json(file);
        for case in vectors.as_array().expect("a list of cases") {
            let name = format!("{}:{}", file.display(), str_of(case, "name"));
            let objects = inline_objects(case);
            assert_eq!(
                objects.len(),
                case["objects"].as_array().map_or(0, Vec::len),
                "{name}: every golden object is inline"
            );
            let root = id(str_of(case, "root"));
            let tree = ObjectTree::from_objects(&root, &objects, &Limits::default())
                .unwrap_or_else(|e| panic!("{name}: tree: {e}"));
            // Inflate, then deflate with the vector's chunk size: same
            // objects, ids, order and tree.
            let message = check_inflate(&name, &tree, &objects);
            let deflated = check_deflate(&name, case, &message, &tree);
            assert_eq!(deflated.objects, objects, "{name}: objects");
            // The tree survives its protobuf form.
            let back = ObjectTree::from_proto(&tree.to_proto(), &Limits::default());
            assert_eq!(back.ok().as_ref(), Some(&tree), "{name}: proto tree");
            if let Payload::Content(content) = &message.payload {
                for record in content.values() {
                    if let flower_message::Record::Array(arrays) = record {
                        for a in arrays.values().filter(|a| !a.data.is_empty()) {
                            a.to_ndarray().unwrap_or_else(|e| panic!("{name}: {e}"));
                        }
                    }
                }
            }
            cases += 1;
            objects_checked += objects.len();
        }
    }
    eprintln!(
        "{cases} golden cases, {objects_checked} objects, from {}",
        dir.display()
    );
    assert!(cases > 0, "no golden cases in {}", dir.display());
    if std::env::var_os("FLWR_GOLDEN_FLEET_DIR").is_none() {
        // The shared directory holds 2 files of 4 cases (57 objects).
        assert!(
            cases >= 8 && objects_checked >= 57,
            "golden vectors went missing"
        );
    }
}
