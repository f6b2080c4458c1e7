//! Who the client is and what its transactions must run with.
//!
//! [`resolve`] turns an authenticated login name into a tenant; [`context`] turns
//! a tenant into the statements that put a server into that tenant's context;
//! [`scan`] decides, cheaply, whether a client statement may have changed session
//! state so that the server needs a reset before anyone else uses it.

pub mod context;
pub mod resolve;
pub mod scan;
