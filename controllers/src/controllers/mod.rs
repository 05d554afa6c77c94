//! The reconcilers, one module per kind.

pub mod cluster;
pub mod host;
pub mod ipam;
pub mod machine;
pub mod remediation;
pub mod shape;
pub mod template;
