//! Redfish client for BMCs. No Kubernetes here.
