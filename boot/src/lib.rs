//! OS boot profiles, config-volume images and ISO kernel-argument patching. No network, no Kubernetes.
