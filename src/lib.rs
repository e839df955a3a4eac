//! Generated protobuf messages and gRPC stubs for the netsync API (`netsync.v1`),
//! gNMI (`gnmi`, `gnmi_ext`) and the simulator's control service, plus the encoded
//! descriptor set that the server registers for reflection.

#![allow(clippy::all, clippy::pedantic, reason = "generated code")]
#![allow(missing_docs, reason = "generated code")]

/// gNMI 0.10 messages and the `gNMI` service.
pub mod gnmi {
    tonic::include_proto!("gnmi");
}

/// gNMI extension messages (`gnmi_ext`).
pub mod gnmi_ext {
    tonic::include_proto!("gnmi_ext");
}

/// The netsync API.
pub mod netsync {
    /// Version 1 of the netsync API.
    pub mod v1 {
        tonic::include_proto!("netsync.v1");
    }

    /// Run-time control of netsync-sim, the gNMI device simulator.
    pub mod sim {
        /// Version 1 of the simulator control API.
        pub mod v1 {
            tonic::include_proto!("netsync.sim.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of every file under `proto/` (and the well-known
/// types they import), for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("netsync_descriptor");
