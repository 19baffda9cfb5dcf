//! Client sessions, node side (ALPN `echomesh-client/1`): `serve` and the `Subscribers`
//! registry. The client side is the `echomesh-client` crate.

mod session;
pub mod subscribers;

pub use session::serve;
pub use subscribers::Subscribers;
