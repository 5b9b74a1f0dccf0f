//! The CRD shipped in the chart and in deploy/ is the one generated from the Rust type.
//! `SRIOV_RS_WRITE_CRD=1 cargo test -p sriov-node-state --test crd` rewrites both files.

use kube::CustomResourceExt;
use sriov_node_state::SriovNodeState;
use std::path::Path;

const FILES: [&str; 2] = [
    "charts/sriov-rs/crds/sriovnodestate.yaml",
    "deploy/crd-sriovnodestate.yaml",
];

fn rendered() -> String {
    let yaml = serde_saphyr::to_string(&SriovNodeState::crd()).expect("serialize the CRD");
    format!(
        "# Generated from the SriovNodeState type in node-state/src/crd.rs: do not edit.\n\
         # SRIOV_RS_WRITE_CRD=1 cargo test -p sriov-node-state --test crd regenerates it.\n{yaml}"
    )
}

#[test]
fn shipped_crd_files_match_the_rust_type() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let expected = rendered();
    for file in FILES {
        let path = root.join(file);
        if std::env::var_os("SRIOV_RS_WRITE_CRD").is_some() {
            std::fs::write(&path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "{file} differs from SriovNodeState::crd(); regenerate it with \
             SRIOV_RS_WRITE_CRD=1 cargo test -p sriov-node-state --test crd"
        );
    }
}

#[test]
fn crd_shape() {
    let crd = SriovNodeState::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("sriovnodestates.sriov-rs.io")
    );
    assert_eq!(crd.spec.group, "sriov-rs.io");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "SriovNodeState");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["sns".to_string()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(
        (v.name.as_str(), v.served, v.storage),
        ("v1alpha1", true, true)
    );
    assert!(
        v.subresources.as_ref().unwrap().status.is_some(),
        "status subresource"
    );
    let columns: Vec<(String, String, i32)> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.clone(), c.json_path.clone(), c.priority.unwrap_or(0)))
        .collect();
    let normal: Vec<&str> = columns
        .iter()
        .filter(|c| c.2 == 0)
        .map(|c| c.0.as_str())
        .collect();
    assert_eq!(
        normal,
        [
            "Adapters",
            "SR-IOV",
            "Link",
            "MTU",
            "NUMA",
            "Pools",
            "Healthy",
            "Allocated",
            "Age"
        ]
    );
    // Every column points at a field the status has (kubectl shows an empty cell otherwise).
    let status = serde_json::to_value(sriov_node_state::SriovNodeStateStatus {
        last_error: Some("x".into()),
        ..Default::default()
    })
    .unwrap();
    for (name, path, _) in &columns {
        if let Some(field) = path.strip_prefix(".status.") {
            let found = field.split('.').try_fold(&status, |v, k| v.get(k));
            assert!(
                found.is_some(),
                "column {name}: {path} is not in the status"
            );
        }
    }
}
