//! End-to-end tests for strait: real processes, real sockets.
