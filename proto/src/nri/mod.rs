//! containerd's Node Resource Interface (NRI), plugin side, on our own transport.
//!
//! A plugin dials the runtime's socket ([`DEFAULT_SOCKET_PATH`]) and speaks ttrpc over it
//! through NRI's connection multiplexer:
//! - [`mux`]: the socket carries logical connections, each chunk framed by an 8-byte header
//!   (connection ID, length; big-endian). Connection [`mux::PLUGIN_SERVICE_CONN`] carries the
//!   runtime's calls into the plugin (the plugin is the ttrpc server there),
//!   [`mux::RUNTIME_SERVICE_CONN`] the plugin's calls into the runtime (`RegisterPlugin`).
//! - [`ttrpc`]: on each logical connection, frames with a 10-byte header (data length, stream
//!   ID, type, flags) whose data is a protobuf [`ttrpc::Request`] or [`ttrpc::Response`].
//! - [`plugin`]: registration, `Configure` (the event subscription), `Synchronize`, and the pod
//!   sandbox events handed to a [`plugin::PodEvents`] implementation.
//!
//! The messages are [`api`] (proto package `nri.pkg.api.v1alpha1`, the subset a pod-level
//! plugin reads).

pub mod mux;
pub mod plugin;
pub mod ttrpc;

/// NRI's plugin API messages (proto package `nri.pkg.api.v1alpha1`).
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/nri.pkg.api.v1alpha1.rs"));
}

/// Where the runtime listens for external plugins.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";
/// The ttrpc service name of the plugin's API.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The ttrpc service name of the runtime's API.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// A set of [`api::Event`]s, as `ConfigureResponse.events` carries it: bit `event - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventMask(pub i32);

impl EventMask {
    /// The pod sandbox lifecycle: run, stop, remove.
    pub const POD_LIFECYCLE: EventMask = EventMask(0b111);

    pub fn of(events: &[api::Event]) -> EventMask {
        EventMask(
            events
                .iter()
                .filter(|e| **e != api::Event::Unknown)
                .fold(0, |m, e| m | (1 << (*e as i32 - 1))),
        )
    }

    pub fn contains(self, event: api::Event) -> bool {
        event != api::Event::Unknown && self.0 & (1 << (event as i32 - 1)) != 0
    }
}

impl api::PodSandbox {
    /// The path of the pod's network namespace, from its Linux namespaces (`None` when the
    /// runtime did not say, e.g. a host-network pod).
    pub fn network_namespace(&self) -> Option<&str> {
        self.linux
            .as_ref()?
            .namespaces
            .iter()
            .find(|n| n.r#type == "network")
            .map(|n| n.path.as_str())
            .filter(|p| !p.is_empty())
    }
}

/// Validates an NRI plugin index: exactly two ASCII digits (the runtime refuses anything else).
pub fn validate_plugin_index(idx: &str) -> Result<(), String> {
    if idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("plugin index {idx:?}: two digits expected (00-99)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_mask_bits_follow_the_event_numbers() {
        use api::Event;
        assert_eq!(
            EventMask::of(&[
                Event::RunPodSandbox,
                Event::StopPodSandbox,
                Event::RemovePodSandbox
            ]),
            EventMask::POD_LIFECYCLE
        );
        assert_eq!(EventMask::of(&[Event::CreateContainer]).0, 0b1000);
        assert_eq!(EventMask::of(&[Event::Unknown]).0, 0);
        let m = EventMask::POD_LIFECYCLE;
        assert!(m.contains(Event::StopPodSandbox));
        assert!(!m.contains(Event::CreateContainer));
        assert!(!m.contains(Event::Unknown));
    }

    #[test]
    fn plugin_index_is_two_digits() {
        assert!(validate_plugin_index("10").is_ok());
        for bad in ["", "1", "100", "a1", "1 ", "０1"] {
            assert!(validate_plugin_index(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn network_namespace_from_the_linux_namespaces() {
        let mut pod = api::PodSandbox::default();
        assert_eq!(pod.network_namespace(), None);
        pod.linux = Some(api::LinuxPodSandbox {
            namespaces: vec![
                api::LinuxNamespace {
                    r#type: "ipc".into(),
                    path: "/proc/1/ns/ipc".into(),
                },
                api::LinuxNamespace {
                    r#type: "network".into(),
                    path: "/var/run/netns/cni-1".into(),
                },
            ],
            ..Default::default()
        });
        assert_eq!(pod.network_namespace(), Some("/var/run/netns/cni-1"));
    }
}
