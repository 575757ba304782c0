//! berth: the node agent of a batch compute pool. See README.md for the shape;
//! the dependency rule is `api → supervisor → {spec, images, layout, containerd,
//! store, host} → model`.

pub mod api;
pub mod config;
pub mod containerd;
pub mod devices;
pub mod host;
pub mod images;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod network;
pub mod node;
pub mod registry;
pub mod safefs;
pub mod sdnotify;
pub mod spec;
pub mod staging;
pub mod store;
pub mod supervisor;
pub mod sys;
