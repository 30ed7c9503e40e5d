//! strait-transport (work in progress).
