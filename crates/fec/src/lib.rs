//! strait-fec (work in progress).
