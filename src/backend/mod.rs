//! Backends: the only code that talks to the outside world about workspaces.

pub mod ec2;
