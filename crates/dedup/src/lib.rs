//! strait-dedup (work in progress).
