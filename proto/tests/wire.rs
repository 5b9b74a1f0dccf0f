//! The generated messages put every field on the field number and wire type
//! the kubelet uses. Each test builds the expected bytes by hand (tag bytes
//! written out literally), checks that encoding gives exactly them, and that
//! decoding them gives the message back.

use std::collections::HashMap;
use std::fmt::Debug;

use prost::Message;
use sriov_proto::deviceplugin::v1beta1 as dp;
use sriov_proto::pluginregistration as reg;
use sriov_proto::podresources::v1 as pr;

/// A length-delimited field: one-byte `tag`, varint length, payload.
fn ld(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let mut len = payload.len();
    while len >= 0x80 {
        v.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    v.push(len as u8);
    v.extend_from_slice(payload);
    v
}

/// A length-delimited string field.
fn s(tag: u8, text: &str) -> Vec<u8> {
    ld(tag, text.as_bytes())
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn check<M: Message + Default + PartialEq + Debug>(msg: &M, expected: &[u8]) {
    assert_eq!(
        msg.encode_to_vec(),
        expected,
        "encoding of {msg:?} differs from the kubelet's layout"
    );
    assert_eq!(&M::decode(expected).expect("decode"), msg);
}

// ---- deviceplugin/v1beta1 -------------------------------------------------

fn dp_topology(node: i64) -> dp::TopologyInfo {
    dp::TopologyInfo {
        nodes: vec![dp::NumaNode { id: node }],
    }
}

#[test]
fn device_plugin_options() {
    let m = dp::DevicePluginOptions {
        pre_start_required: true,
        get_preferred_allocation_available: true,
    };
    // field 1 varint (0x08), field 2 varint (0x10)
    check(&m, &[0x08, 0x01, 0x10, 0x01]);
    let only2 = dp::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    };
    check(&only2, &[0x10, 0x01]);
}

#[test]
fn register_request() {
    let m = dp::RegisterRequest {
        version: "v1beta1".into(),
        endpoint: "intel.com_sriov.sock".into(),
        resource_name: "intel.com/sriov".into(),
        options: Some(dp::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    };
    let expected = cat(&[
        s(0x0a, "v1beta1"),
        s(0x12, "intel.com_sriov.sock"),
        s(0x1a, "intel.com/sriov"),
        ld(0x22, &[0x10, 0x01]),
    ]);
    check(&m, &expected);
}

#[test]
fn empty_messages_encode_to_nothing() {
    check(&dp::Empty {}, &[]);
    check(&dp::PreStartContainerResponse {}, &[]);
    check(&reg::InfoRequest {}, &[]);
    check(&reg::RegistrationStatusResponse {}, &[]);
    check(&pr::ListPodResourcesRequest {}, &[]);
    check(&pr::AllocatableResourcesRequest {}, &[]);
}

#[test]
fn device_and_topology() {
    let m = dp::Device {
        id: "a".into(),
        health: sriov_proto::HEALTHY.into(),
        topology: Some(dp_topology(1)),
    };
    // ID 0x0a, health 0x12, topology 0x1a { nodes 0x0a { ID 0x08 varint } }
    let expected = cat(&[
        vec![0x0a, 0x01, b'a'],
        s(0x12, "Healthy"),
        vec![0x1a, 0x04, 0x0a, 0x02, 0x08, 0x01],
    ]);
    check(&m, &expected);
}

#[test]
fn numa_node_id_is_int64() {
    // A negative int64 takes ten varint bytes (an int32 would too, but a
    // sint64 would zig-zag to one byte).
    let m = dp::NumaNode { id: -1 };
    let mut expected = vec![0x08];
    expected.extend_from_slice(&[0xff; 9]);
    expected.push(0x01);
    check(&m, &expected);
}

#[test]
fn list_and_watch_response() {
    let m = dp::ListAndWatchResponse {
        devices: vec![
            dp::Device {
                id: "x".into(),
                health: sriov_proto::UNHEALTHY.into(),
                topology: None,
            },
            dp::Device {
                id: "y".into(),
                health: String::new(),
                topology: None,
            },
        ],
    };
    let expected = cat(&[
        ld(0x0a, &cat(&[s(0x0a, "x"), s(0x12, "Unhealthy")])),
        ld(0x0a, &s(0x0a, "y")),
    ]);
    check(&m, &expected);
}

#[test]
fn preferred_allocation() {
    let c = dp::ContainerPreferredAllocationRequest {
        available_device_i_ds: vec!["a".into(), "b".into()],
        must_include_device_i_ds: vec!["c".into()],
        allocation_size: 2,
    };
    // available_deviceIDs 0x0a (one per entry), must_include_deviceIDs 0x12,
    // allocation_size field 3 varint 0x18
    let c_bytes = cat(&[s(0x0a, "a"), s(0x0a, "b"), s(0x12, "c"), vec![0x18, 0x02]]);
    check(&c, &c_bytes);

    let req = dp::PreferredAllocationRequest {
        container_requests: vec![c],
    };
    check(&req, &ld(0x0a, &c_bytes));

    let resp = dp::PreferredAllocationResponse {
        container_responses: vec![dp::ContainerPreferredAllocationResponse {
            device_i_ds: vec!["a".into(), "c".into()],
        }],
    };
    check(&resp, &ld(0x0a, &cat(&[s(0x0a, "a"), s(0x0a, "c")])));
}

#[test]
fn allocate_request() {
    let m = dp::AllocateRequest {
        container_requests: vec![dp::ContainerAllocateRequest {
            devices_ids: vec!["0000:3b:02.0".into()],
        }],
    };
    check(&m, &ld(0x0a, &s(0x0a, "0000:3b:02.0")));
}

#[test]
fn container_allocate_response() {
    let m = dp::ContainerAllocateResponse {
        envs: HashMap::from([("K".to_string(), "V".to_string())]),
        mounts: vec![dp::Mount {
            container_path: "/c".into(),
            host_path: "/h".into(),
            read_only: true,
        }],
        devices: vec![dp::DeviceSpec {
            container_path: "/dev/vfio/7".into(),
            host_path: "/dev/vfio/7".into(),
            permissions: "rw".into(),
        }],
        annotations: HashMap::from([("A".to_string(), "B".to_string())]),
        cdi_devices: vec![dp::CdiDevice {
            name: "vendor.com/net=vf0".into(),
        }],
    };
    let expected = cat(&[
        // envs: map entry in field 1 { key 0x0a, value 0x12 }
        ld(0x0a, &cat(&[s(0x0a, "K"), s(0x12, "V")])),
        // mounts field 2 { container_path 1, host_path 2, read_only 3 varint }
        ld(
            0x12,
            &cat(&[s(0x0a, "/c"), s(0x12, "/h"), vec![0x18, 0x01]]),
        ),
        // devices field 3 { container_path 1, host_path 2, permissions 3 }
        ld(
            0x1a,
            &cat(&[
                s(0x0a, "/dev/vfio/7"),
                s(0x12, "/dev/vfio/7"),
                s(0x1a, "rw"),
            ]),
        ),
        // annotations: map entry in field 4
        ld(0x22, &cat(&[s(0x0a, "A"), s(0x12, "B")])),
        // cdi_devices field 5 { name 1 }
        ld(0x2a, &s(0x0a, "vendor.com/net=vf0")),
    ]);
    check(&m, &expected);

    let resp = dp::AllocateResponse {
        container_responses: vec![m],
    };
    check(&resp, &ld(0x0a, &expected));
}

#[test]
fn pre_start_container_request() {
    let m = dp::PreStartContainerRequest {
        devices_ids: vec!["a".into(), "b".into()],
    };
    check(&m, &cat(&[s(0x0a, "a"), s(0x0a, "b")]));
}

// ---- pluginregistration ---------------------------------------------------

#[test]
fn plugin_info() {
    let m = reg::PluginInfo {
        r#type: sriov_proto::DEVICE_PLUGIN_TYPE.into(),
        name: "intel.com/sriov".into(),
        endpoint: "/var/lib/kubelet/plugins_registry/x.sock".into(),
        supported_versions: vec!["v1beta1".into()],
    };
    let expected = cat(&[
        s(0x0a, "DevicePlugin"),
        s(0x12, "intel.com/sriov"),
        s(0x1a, "/var/lib/kubelet/plugins_registry/x.sock"),
        // supported_versions: field 4, repeated string
        s(0x22, "v1beta1"),
    ]);
    check(&m, &expected);
}

#[test]
fn registration_status() {
    let m = reg::RegistrationStatus {
        plugin_registered: true,
        error: "boom".into(),
    };
    check(&m, &cat(&[vec![0x08, 0x01], s(0x12, "boom")]));
}

// ---- podresources/v1 ------------------------------------------------------

fn pr_topology(node: i64) -> pr::TopologyInfo {
    pr::TopologyInfo {
        nodes: vec![pr::NumaNode { id: node }],
    }
}

fn container_devices() -> (pr::ContainerDevices, Vec<u8>) {
    let m = pr::ContainerDevices {
        resource_name: "intel.com/sriov".into(),
        device_ids: vec!["0000:3b:02.0".into(), "0000:3b:02.1".into()],
        topology: Some(pr_topology(1)),
    };
    let bytes = cat(&[
        s(0x0a, "intel.com/sriov"),
        s(0x12, "0000:3b:02.0"),
        s(0x12, "0000:3b:02.1"),
        // topology field 3 { nodes 1 { ID 1 varint } }
        vec![0x1a, 0x04, 0x0a, 0x02, 0x08, 0x01],
    ]);
    (m, bytes)
}

#[test]
fn pod_resources_container_devices() {
    let (m, bytes) = container_devices();
    check(&m, &bytes);
}

#[test]
fn pod_resources_list_response() {
    let (devs, devs_bytes) = container_devices();
    let mem = pr::ContainerMemory {
        memory_type: "hugepages-1Gi".into(),
        size: 2,
        topology: Some(pr_topology(0)),
    };
    // memory_type 0x0a, size field 2 varint 0x10, topology 0x1a (node 0 has
    // no ID field on the wire: proto3 omits zero)
    let mem_bytes = cat(&[
        s(0x0a, "hugepages-1Gi"),
        vec![0x10, 0x02],
        vec![0x1a, 0x02, 0x0a, 0x00],
    ]);
    check(&mem, &mem_bytes);

    let dynres = pr::DynamicResource {
        claim_name: "claim".into(),
        claim_namespace: "ns".into(),
        claim_resources: vec![pr::ClaimResource {
            cdi_devices: vec![pr::CdiDevice {
                name: "v.com/c=d".into(),
            }],
            driver_name: "drv".into(),
            pool_name: "pool".into(),
            device_name: "dev".into(),
        }],
    };
    // claim_name is field 2 (field 1 was retired upstream)
    let claim_bytes = cat(&[
        ld(0x0a, &s(0x0a, "v.com/c=d")),
        s(0x12, "drv"),
        s(0x1a, "pool"),
        s(0x22, "dev"),
    ]);
    let dynres_bytes = cat(&[s(0x12, "claim"), s(0x1a, "ns"), ld(0x22, &claim_bytes)]);
    check(&dynres, &dynres_bytes);

    let container = pr::ContainerResources {
        name: "c0".into(),
        devices: vec![devs],
        cpu_ids: vec![3, 4],
        memory: vec![mem],
        dynamic_resources: vec![dynres],
    };
    let container_bytes = cat(&[
        s(0x0a, "c0"),
        ld(0x12, &devs_bytes),
        // cpu_ids: field 3, packed int64
        vec![0x1a, 0x02, 0x03, 0x04],
        ld(0x22, &mem_bytes),
        ld(0x2a, &dynres_bytes),
    ]);
    check(&container, &container_bytes);

    let pod = pr::PodResources {
        name: "pod".into(),
        namespace: "default".into(),
        containers: vec![container],
    };
    let pod_bytes = cat(&[
        s(0x0a, "pod"),
        s(0x12, "default"),
        ld(0x1a, &container_bytes),
    ]);
    check(&pod, &pod_bytes);

    let list_bytes = ld(0x0a, &pod_bytes);
    assert!(list_bytes.len() > 130, "exercises a two-byte length");
    let list = pr::ListPodResourcesResponse {
        pod_resources: vec![pod.clone()],
    };
    check(&list, &list_bytes);

    // GetPodResourcesResponse: pod_resources field 1, a single message
    let get = pr::GetPodResourcesResponse {
        pod_resources: Some(pod),
    };
    check(&get, &list_bytes);
}

#[test]
fn pod_resources_get_request() {
    let m = pr::GetPodResourcesRequest {
        pod_name: "p".into(),
        pod_namespace: "ns".into(),
    };
    check(&m, &cat(&[s(0x0a, "p"), s(0x12, "ns")]));
}

#[test]
fn allocatable_resources_response() {
    let (devs, devs_bytes) = container_devices();
    let m = pr::AllocatableResourcesResponse {
        devices: vec![devs],
        cpu_ids: vec![1],
        memory: vec![pr::ContainerMemory {
            memory_type: "memory".into(),
            size: 0,
            topology: None,
        }],
    };
    let expected = cat(&[
        ld(0x0a, &devs_bytes),
        vec![0x12, 0x01, 0x01],
        ld(0x1a, &s(0x0a, "memory")),
    ]);
    check(&m, &expected);
}

#[test]
fn unknown_fields_are_skipped() {
    // A newer kubelet may add fields: decoding must skip them.
    let mut bytes = cat(&[s(0x0a, "a"), s(0x12, "Healthy")]);
    bytes.extend_from_slice(&[0x78, 0x05]); // field 15, varint 5
    bytes.extend_from_slice(&[0x82, 0x01, 0x01, b'z']); // field 16, "z"
    let d = dp::Device::decode(&bytes[..]).unwrap();
    assert_eq!(d.id, "a");
    assert_eq!(d.health, "Healthy");
}
