//! Local control plane and BMC lab for integration tests.
