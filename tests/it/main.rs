//! Integration tests: real PostgreSQL, real gRPC (fake RQDs are grpcio servers on loopback),
//! the real pipeline. One binary so grpc links once. Each test owns a database.

mod support;

mod accounting;
mod booking;
mod concurrency;
mod binary;
mod conformance;
mod scenarios;
mod explain;
mod faults;
mod hostile;
mod daemon;
mod instances;
mod policy;
