//! Who the client is and what its transactions must run with.
//!
//! [`resolve`] turns an authenticated login name into a tenant; [`context`] turns
//! a tenant into the statements that put a server into that tenant's context;
//! [`scan`] decides, cheaply, whether a client statement may have changed session
//! state, and [`guard`] parses what it flags to decide what follows the client,
//! what is refused and what needs a reset.

pub mod context;
pub mod guard;
pub mod resolve;
pub mod scan;
