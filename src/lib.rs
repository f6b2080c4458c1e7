//! pgtenant: a tenant-aware PostgreSQL transaction pooler.
//!
//! A client connection goes through these stages, each a module:
//!
//! 1. [`session`] accepts it: handshake (startup packet), login ([`auth`] against
//!    secrets in the [`config`], tenant from [`tenant::resolve`]), then the relay;
//! 2. for each transaction the relay checks a server out of the tenant's [`pool`]
//!    (fair across tenants), puts the [`tenant::context`] in front of the client's
//!    first message when the [`server`] lacks it, forwards bytes by header only
//!    ([`protocol::frame`]), and releases the server at `ReadyForQuery('I')`;
//! 3. [`app`] wires listeners, maintenance and signals; [`demo`] runs the whole
//!    thing on a throwaway PostgreSQL.
//!
//! Layers, bottom to top: `protocol`, `error`, `tls`, `workers` → `config` → `auth`, `tenant`,
//! `prepared`, `server` → `pool` → `session` → `app`, `demo`. A module only uses modules
//! below it. Errors reach clients only through [`error::ClientError`].

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod prepared;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod session;
pub mod tenant;
pub mod tls;
pub mod workers;
