//! strait-admin (work in progress).
