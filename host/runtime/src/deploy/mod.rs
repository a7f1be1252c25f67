//! The deploy flow: a component version checked, compiled and linked ([`prepare`]), and
//! the set of live ones ([`live_set`]), swapped atomically on every deploy and undeploy,
//! whose triggers are told about each change.

pub mod live_set;
pub mod prepare;

pub use crate::deployment::{DeployError, Deployment, Snapshot};
pub use live_set::{Deployed, LiveSet};
pub use prepare::Deployer;
