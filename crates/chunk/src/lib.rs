//! strait-chunk (work in progress).
