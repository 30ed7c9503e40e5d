//! strait-wanem (work in progress).
