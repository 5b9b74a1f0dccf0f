//! Kubelet gRPC APIs used by sriov-rs, generated with tonic 0.14 / prost 0.14
//! from the `.proto` files in `proto/proto/`:
//!
//! - [`deviceplugin::v1beta1`]: the device plugin API (`Registration` served by
//!   the kubelet, `DevicePlugin` served by the plugin);
//! - [`pluginregistration`]: the plugin watcher API (`Registration` served by
//!   the plugin in `plugins_registry/`);
//! - [`podresources::v1`]: the pod resources API (`PodResourcesLister` served
//!   by the kubelet);
//! - `dra::v1`, `dra::v1beta1` and `dra::health::v1` (feature `dra`): the
//!   DRA plugin API (`DRAPlugin`, served by a DRA driver on
//!   `plugins/<driver>/dra.sock`) and its device health stream
//!   (`DRAResourceHealth`);
//! - `nri` (feature `nri`): containerd's NRI plugin API and our own transport
//!   for it (ttrpc framing, NRI's connection multiplexer, the plugin side);
//! - `cri::runtime::v1` (feature `cri`): a subset of the Container Runtime
//!   Interface (`RuntimeService` served by the runtime), for the tests that
//!   drive containerd as kubelet does.
//!
//! Each module holds the messages plus `*_client` and `*_server` submodules.
//! Field names are prost's snake-case forms of the kubelet's names, e.g.
//! `ID` → `id`, `available_deviceIDs` → `available_device_i_ds`,
//! `deviceIDs` → `device_i_ds`.
//!
//! [`connect_unix`] and [`serve_unix_incoming`] carry gRPC over Unix sockets
//! for the daemon, the CNI and the kubelet emulator; servers accept any
//! `:authority` a client sends ([`authority`]).

use std::path::{Path, PathBuf};

pub mod authority;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Kubelet device plugin API, version v1beta1 (proto package `v1beta1`).
pub mod deviceplugin {
    /// Messages, `registration_{client,server}` and `device_plugin_{client,server}`.
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");
    }
}

/// Kubelet plugin watcher API (proto package `pluginregistration`):
/// messages and `registration_{client,server}`.
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// Kubelet pod resources API (proto package `v1`).
pub mod podresources {
    /// Messages and `pod_resources_lister_{client,server}`.
    pub mod v1 {
        tonic::include_proto!("v1");
    }
}

/// Kubelet DRA APIs (feature `dra`).
#[cfg(feature = "dra")]
pub mod dra {
    /// `DRAPlugin` v1 (proto package `k8s.io.kubelet.pkg.apis.dra.v1`): messages and
    /// `dra_plugin_{client,server}`.
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    /// `DRAPlugin` v1beta1 (proto package `k8s.io.kubelet.pkg.apis.dra.v1beta1`), for kubelets
    /// before 1.34.
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
    }
    /// Device health.
    pub mod health {
        /// `DRAResourceHealth` v1 (proto package `v1`): messages and
        /// `dra_resource_health_{client,server}`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/drahealth/v1.rs"));
        }
    }

    /// `PluginInfo.type` of a DRA driver.
    pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
    /// `PluginInfo.supported_versions` of a driver serving both versions: the gRPC services it
    /// offers on its endpoint.
    pub const SUPPORTED_VERSIONS: [&str; 2] = ["v1.DRAPlugin", "v1beta1.DRAPlugin"];
    /// The health service in the `<package>.<Service>` form of the versions above; it is served
    /// on the same endpoint (a kubelet without it gets Unimplemented).
    pub const HEALTH_SERVICE_VERSION: &str = "v1.DRAResourceHealth";
    /// Folder of a DRA driver's own sockets: `PLUGINS_PATH/<driver>/dra.sock`.
    pub const PLUGINS_PATH: &str = "/var/lib/kubelet/plugins";
    /// File name of the DRA service socket in the driver's folder.
    pub const DRA_SOCKET: &str = "dra.sock";

    /// `plugins_registry/<driver>-reg.sock`: the registration socket's file name.
    pub fn registration_socket_name(driver: &str) -> String {
        format!("{driver}-reg.sock")
    }
}

#[cfg(feature = "nri")]
pub mod nri;

/// Container Runtime Interface, version v1 (proto package `runtime.v1`): the subset the tests
/// use (`Version` and pod sandboxes), same field names and numbers as kubelet's.
#[cfg(feature = "cri")]
pub mod cri {
    pub mod runtime {
        /// Messages and `runtime_service_{client,server}`.
        pub mod v1 {
            tonic::include_proto!("runtime.v1");
        }
    }
}

/// Device plugin API version sent in `RegisterRequest.version` and listed in
/// `PluginInfo.supported_versions`.
pub const DEVICE_PLUGIN_API_VERSION: &str = "v1beta1";
/// File name of the kubelet's registration socket in the device plugin folder.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// `Device.health` of a usable device.
pub const HEALTHY: &str = "Healthy";
/// `Device.health` of a device that must not be allocated.
pub const UNHEALTHY: &str = "Unhealthy";
/// `PluginInfo.type` of a device plugin.
pub const DEVICE_PLUGIN_TYPE: &str = "DevicePlugin";

/// Folder of the device plugin sockets (kubelet's and the plugins').
pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
/// Folder watched by the kubelet's plugin watcher.
pub const PLUGINS_REGISTRY_PATH: &str = "/var/lib/kubelet/plugins_registry";
/// Folder of the kubelet's pod resources socket (mount the folder, not the
/// socket, to survive kubelet restarts).
pub const POD_RESOURCES_PATH: &str = "/var/lib/kubelet/pod-resources";

/// Placeholder URI for channels over Unix sockets: the connector ignores it;
/// it only fills the `:authority` header.
const DUMMY_URI: &str = "http://localhost";

fn unix_endpoint() -> Endpoint {
    Endpoint::from_static(DUMMY_URI)
}

fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    })
}

/// Opens a gRPC channel to the server listening on the Unix socket `path`.
///
/// Connects at once, so a missing socket or a server that does not accept
/// is an error here. When the connection breaks later, the channel dials
/// `path` again on the next call.
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    unix_endpoint()
        .connect_with_connector(unix_connector(path.as_ref().to_path_buf()))
        .await
}

/// Like [`connect_unix`], but dials only at the first call.
pub fn connect_unix_lazy(path: impl AsRef<Path>) -> Channel {
    unix_endpoint().connect_with_connector_lazy(unix_connector(path.as_ref().to_path_buf()))
}

/// Turns a bound Unix listener into the connection stream that
/// `tonic::transport::Server::builder()...serve_with_incoming(..)` and
/// `serve_with_incoming_shutdown(..)` take. Each connection accepts whatever
/// `:authority` its client sends (a socket path, as older kubelets do).
pub fn serve_unix_incoming(
    listener: UnixListener,
) -> impl Stream<Item = std::io::Result<authority::AnyAuthority<UnixStream>>> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.map(authority::AnyAuthority::new))
}

/// Binds a Unix listener at `path`, removing a stale socket file left there by
/// an earlier run. Must be called inside a tokio runtime.
pub fn bind_unix(path: impl AsRef<Path>) -> std::io::Result<UnixListener> {
    let path = path.as_ref();
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}
