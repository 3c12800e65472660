//! Integration tests for stigmer: the real built binary, run against the
//! fixture components built by `make test` (tests/fixtures/build.sh).

mod applets;
mod build_errors;
mod cache;
mod container;
mod corpus;
mod deploy;
mod dirtree;
mod dispatch;
mod dist;
mod env;
mod home;
mod logs;
mod passthrough;
mod policy;
mod pyinstaller;
mod runner_config;
mod runners;
mod server;
mod server_world;
mod settings;
mod torture;
mod util;
