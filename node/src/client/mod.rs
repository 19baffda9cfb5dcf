//! Client sessions (ALPN `echomesh-client/1`): the node side (`serve`, `Subscribers`) and the
//! client side used by `echomeshctl`, the bench and the tests (`connect`).

mod connect;
mod session;

pub use connect::{connect, ClientError, ClientReader, ClientSession, ClientWriter};
pub use session::{serve, Subscribers};
