//! strait-wire (work in progress).
