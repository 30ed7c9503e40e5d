//! strait-edge (work in progress).
