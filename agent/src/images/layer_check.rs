//! The check a layer's bytes pass as they stream in (decompression bombs,
//! registries that send more than the descriptor says).

use crate::containerd::BlobRef;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Checks a layer's bytes as they stream in: never more than its descriptor
/// declares, and never more than `max` once decompressed (gzip layers are
/// decompressed on the way to count; an uncompressed layer's size is its
/// own). A violation ends the stream with an `InvalidData` error, which
/// the content writer turns into a refused (not retried) write: nothing of
/// it is committed.
pub(super) struct LayerCheck {
    declared: u64,
    seen: u64,
    decoder: Option<Box<dyn std::io::Write + Send>>,
    /// Nanoseconds spent decompressing, added up across the pull's layers.
    spent: Arc<AtomicU64>,
}

/// Counts decompressed bytes, failing past the limit.
struct Counter {
    written: u64,
    max: u64,
}

/// How every refusal's message starts (a decoder hands the counter's back).
const REFUSED: &str = "refused: ";

/// The stream's end for a layer that breaks a rule.
fn refused(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{REFUSED}{why}"))
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.max {
            return Err(refused(format!(
                "the layer decompresses to more than {} bytes ([registries] max_layer_bytes)",
                self.max
            )));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LayerCheck {
    pub(super) fn new(blob: &BlobRef, max: u64, spent: Arc<AtomicU64>) -> Result<Self, String> {
        let declared = blob.size.max(0) as u64;
        let counter = Counter { written: 0, max };
        let decoder: Option<Box<dyn std::io::Write + Send>> = if blob.media_type.ends_with("gzip") {
            Some(Box::new(flate2::write::MultiGzDecoder::new(counter)))
        } else if blob.media_type.ends_with("zstd") {
            let d = zstd::stream::write::Decoder::new(counter).map_err(|e| format!("zstd: {e}"))?;
            Some(Box::new(d))
        } else {
            if declared > max {
                return Err(format!("the layer is {declared} bytes, more than [registries] max_layer_bytes ({max})"));
            }
            None
        };
        Ok(Self { declared, seen: 0, decoder, spent })
    }

    pub(super) fn feed(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.seen += chunk.len() as u64;
        if self.seen > self.declared {
            return Err(refused(format!(
                "the registry sent more than the {} bytes the layer's descriptor declares",
                self.declared
            )));
        }
        if let Some(d) = self.decoder.as_mut() {
            let clock = Instant::now();
            let written = d.write_all(chunk);
            self.spent.fetch_add(u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            written.map_err(|e| {
                if e.to_string().starts_with(REFUSED) {
                    e
                } else {
                    refused(format!("not the layer's compression: {e}"))
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_cut_off_at_their_size_and_decompressed_size() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![0u8; 4 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        let blob = |size: usize, media_type: &str| BlobRef {
            media_type: media_type.into(),
            digest: "sha256:x".into(),
            size: size as i64,
        };
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        let spent = Arc::new(AtomicU64::new(0));
        // Within the limit: fine, in any chunking.
        let mut c = LayerCheck::new(&blob(bomb.len(), gzip), 8 << 20, spent.clone()).unwrap();
        for part in bomb.chunks(1000) {
            c.feed(part).unwrap();
        }
        assert!(spent.load(Ordering::Relaxed) > 0, "the time spent decompressing is counted");
        // 4 MiB of zeros against a 1 MiB limit: refused on the way.
        let mut c = LayerCheck::new(&blob(bomb.len(), gzip), 1 << 20, spent.clone()).unwrap();
        let err = bomb.chunks(1000).try_for_each(|p| c.feed(p)).unwrap_err();
        assert!(err.to_string().contains("max_layer_bytes"), "{err}");
        // More than the descriptor declares.
        let mut c = LayerCheck::new(&blob(bomb.len() - 1, gzip), 8 << 20, spent.clone()).unwrap();
        let err = c.feed(&bomb).unwrap_err();
        assert!(err.to_string().contains("declares"), "{err}");
        // zstd, the same.
        let z = zstd::stream::encode_all(&vec![0u8; 4 << 20][..], 3).unwrap();
        let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
        LayerCheck::new(&blob(z.len(), zstd), 8 << 20, spent.clone()).unwrap().feed(&z).unwrap();
        let mut c = LayerCheck::new(&blob(z.len(), zstd), 1 << 20, spent.clone()).unwrap();
        assert!(c.feed(&z).unwrap_err().to_string().contains("max_layer_bytes"));
        // An uncompressed layer larger than the limit is refused before it is fetched.
        assert!(
            LayerCheck::new(&blob(2 << 20, "application/vnd.oci.image.layer.v1.tar"), 1 << 20, spent.clone()).is_err()
        );
        assert!(LayerCheck::new(&blob(10, gzip), 1 << 20, spent.clone()).unwrap().feed(b"not gzip at all").is_err());
    }
}
