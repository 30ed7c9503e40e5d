//! Criterion micro-benchmarks for strait.
