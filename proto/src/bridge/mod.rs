//! The Echo protocol (Spot-On, Spot-On-Lite, Smoke, SmokeStack) as echomesh's bridge speaks it,
//! without IO: EOM-delimited frames parsed with bounds and classified ([`frame`]), the
//! identity filter of "Cryptographic Discovery" ([`filter`]), the long memory of frames that
//! breaks every loop through Echo networks ([`memory`]), and the `echo+tls://` link addresses
//! ([`url`]). Notes on the upstream protocol: the team's ECHO-INTEROP.md; our design:
//! docs/ECHO.md.

pub mod filter;
pub mod frame;
pub mod memory;
pub mod url;

pub use filter::{FilterInput, Identities};
pub use frame::{Frame, Junk, Splitter};
pub use memory::{FrameMemory, Verdict};
pub use url::EchoUrl;
