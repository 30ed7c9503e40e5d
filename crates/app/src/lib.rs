//! strait-app (work in progress).
