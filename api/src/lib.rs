//! Beskar7 CRD types.
