//! Client sessions (ALPN `echomesh-client/1`): the node side (`serve`, `Subscribers`) and the
//! client side used by `echomeshctl`, the bench and the tests (`connect`).

mod connect;
pub mod follow;
pub mod inject;
mod session;

pub use connect::{
    connect, connect_any, connect_following, ClientError, ClientReader, ClientSession, ClientWriter,
};
pub use follow::{Followed, Follower};
pub use session::{serve, Subscribers};
