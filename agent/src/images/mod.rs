//! Pulling images into containerd's content store, client-side. The image
//! facts it works with (reference normalisation, image config, platform, chain
//! ID) are domain types in `model`, shared with `containerd`.

mod layer_check;
mod pull;

pub use crate::model::{chain_id, normalize, ImageConfig, ImageError, Platform};
pub use pull::{Progress, Pull, PullError, PullReport, PullSettings, PullTimes, Puller};
