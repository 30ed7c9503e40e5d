//! strait-core (work in progress).
