pub(crate) mod node;
pub(crate) mod shared;
// Reachable through `CollectiveError::Global`, so nameable.
pub use shared::GlobalCollectiveError;

#[cfg(feature = "orchestrator")]
pub mod orchestrator;
#[cfg(feature = "orchestrator")]
pub use orchestrator::*;

mod base;
pub use base::*;
