//! strait-testkit (work in progress).
