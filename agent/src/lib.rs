//! berth: the node agent of a batch compute pool. See README.md for the shape;
//! the dependency rule is `api → supervisor → {spec, images, layout, containerd,
//! store} → model`.

pub mod config;
pub mod images;
pub mod layout;
pub mod model;
pub mod spec;
