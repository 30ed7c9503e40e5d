//! strait-store (work in progress).
