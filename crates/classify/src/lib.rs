//! strait-classify (work in progress).
