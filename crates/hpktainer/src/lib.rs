//! hpktainer: starts nested Apptainer containers with their own overlay address inside a bubble.

pub mod apptainer_args;
pub mod state;
pub mod subnet_env;
