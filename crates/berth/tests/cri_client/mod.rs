//! A CRI client as the kubelet is one: Kubernetes' CRI API (`runtime.v1`, gRPC) over
//! containerd's socket. Shared by the CRI test (tests/containerd.rs) and the pod
//! benchmark (examples/bench_pods.rs).

use std::path::Path;

use hyper_util::rt::TokioIo;
#[allow(unused_imports)] // the benchmark pulls nothing
pub use k8s_cri::v1::image_service_client::ImageServiceClient;
pub use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the CRI on the unix socket `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    // The address is not used: the connector dials the socket.
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}
