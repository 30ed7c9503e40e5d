//! strait-config (work in progress).
