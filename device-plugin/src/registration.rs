//! Registration through `kubelet.sock`, retried until it works.
//!
//! Kubelet creates `kubelet.sock` at bind() and only accepts after listen(), so the first attempt
//! right after the inotify event may be refused: attempts start 5 ms apart and back off to one a
//! second, for as long as it takes. The daemon runs [`register`] as a supervised task and aborts
//! it when a newer registration supersedes it, e.g. after another kubelet restart.

use crate::metrics::Metrics;
use crate::plugin_server::plugin_options;
use sriov_proto::deviceplugin::v1beta1 as dp;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("kubelet refused the registration: {0}")]
    Refused(#[from] tonic::Status),
    #[error("kubelet did not answer within {0:?}")]
    Timeout(Duration),
}

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One `Register` call.
pub async fn register_once(
    kubelet_socket: &Path,
    endpoint: &str,
    resource: &str,
) -> Result<(), RegistrationError> {
    let call = async {
        let channel = sriov_proto::connect_unix(kubelet_socket)
            .await
            .map_err(|source| RegistrationError::Connect {
                path: kubelet_socket.to_path_buf(),
                source,
            })?;
        let mut client = dp::registration_client::RegistrationClient::new(channel);
        client
            .register(dp::RegisterRequest {
                version: sriov_proto::DEVICE_PLUGIN_API_VERSION.to_string(),
                endpoint: endpoint.to_string(),
                resource_name: resource.to_string(),
                options: Some(plugin_options()),
            })
            .await?;
        Ok(())
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, call)
        .await
        .map_err(|_| RegistrationError::Timeout(ATTEMPT_TIMEOUT))?
}

/// Registers `resource` (served at `endpoint`, a file name in kubelet's folder) until kubelet
/// accepts it; returns the number of attempts. Never gives up: it ends on success or when its
/// task is aborted.
pub async fn register(
    kubelet_socket: PathBuf,
    endpoint: String,
    resource: String,
    metrics: Arc<Metrics>,
) -> Result<u32, std::convert::Infallible> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match register_once(&kubelet_socket, &endpoint, &resource).await {
            Ok(()) => {
                metrics.registration(&resource, true);
                tracing::info!(pool = %resource, endpoint = %endpoint, attempts, "registered with kubelet");
                return Ok(attempts);
            }
            Err(e) => {
                // A missing or not-yet-listening kubelet.sock is the normal state while kubelet
                // (re)starts; say so quietly at first.
                if attempts == 10 || attempts.is_multiple_of(60) {
                    metrics.registration(&resource, false);
                    tracing::warn!(pool = %resource, attempts, "registration still failing: {e}");
                } else {
                    tracing::debug!(pool = %resource, attempts, "registration attempt failed: {e}");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
