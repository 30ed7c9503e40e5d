//! strait-codec (work in progress).
