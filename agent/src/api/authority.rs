//! Stock gRPC clients on the agent's unix socket. grpcio (since 1.57),
//! grpc-java and grpcurl send the socket path, percent-encoded, as the
//! HTTP/2 `:authority`; h2 (under tonic) refuses that as a malformed
//! authority and resets the stream, and has no setting to accept it
//! (hyperium/h2#487). So on the unix socket each connection goes through
//! [`AuthorityFix`]: the client's header blocks (HPACK, RFC 7541) are
//! decoded, an `:authority` that is not a valid URI authority becomes
//! `localhost`, and every block is sent on as literals without indexing (so
//! h2's decoding table stays empty and in step). Everything else passes
//! through unchanged. TCP listeners get none of this.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// h2's SETTINGS_MAX_FRAME_SIZE (the default, which the agent keeps):
/// frames sent on stay within it, HEADERS and CONTINUATION frames received
/// beyond it close the connection.
const MAX_FRAME: usize = 16 << 10;
/// A compressed header block larger than this closes the connection (a gRPC
/// request's is well under 1 KiB).
const MAX_BLOCK: usize = 16 << 10;
/// A decoded header list larger than this closes the connection (HPACK
/// references can make a small block decode to much more).
const MAX_DECODED: usize = 64 << 10;
/// The dynamic table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE): a
/// client's size update beyond it closes the connection.
const MAX_TABLE: usize = 4096;

/// A header block being collected (HEADERS then CONTINUATION frames).
struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    data: Vec<u8>,
}

/// A unix connection with the client's `:authority` made acceptable to h2.
pub(super) struct AuthorityFix<S> {
    inner: S,
    input: Vec<u8>,
    output: Vec<u8>,
    preface: bool,
    block: Option<Block>,
    decoder: hpack::Decoder<'static>,
    /// Bytes of a frame that is passed on as it arrives (not a header frame).
    passthrough: usize,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub(super) fn new(inner: S) -> Self {
        Self {
            inner,
            input: Vec::new(),
            output: Vec::new(),
            preface: false,
            block: None,
            decoder: hpack::Decoder::new(),
            passthrough: 0,
            eof: false,
        }
    }

    /// Moves every complete frame of `input` to `output`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        if !self.preface {
            if self.input.len() < PREFACE.len() {
                return Ok(());
            }
            // Not HTTP/2 from the start: passed on untouched, for h2 to refuse.
            self.output.extend(self.input.drain(..PREFACE.len()));
            self.preface = true;
        }
        loop {
            // The rest of a frame that is not a header frame: on as it comes
            // (h2 enforces its size limits on it).
            if self.passthrough > 0 {
                let n = self.passthrough.min(self.input.len());
                self.output.extend(self.input.drain(..n));
                self.passthrough -= n;
                if self.passthrough > 0 {
                    return Ok(());
                }
            }
            if self.input.len() < 9 {
                return Ok(());
            }
            let len = usize::from(self.input[0]) << 16 | usize::from(self.input[1]) << 8 | usize::from(self.input[2]);
            let typ = self.input[3];
            if typ != HEADERS && typ != CONTINUATION {
                if self.block.is_some() {
                    return Err(bad("a frame inside a header block"));
                }
                self.output.extend(self.input.drain(..9));
                self.passthrough = len;
                continue;
            }
            if len > MAX_FRAME {
                return Err(bad("a header frame larger than SETTINGS_MAX_FRAME_SIZE"));
            }
            if self.input.len() < 9 + len {
                return Ok(());
            }
            let frame: Vec<u8> = self.input.drain(..9 + len).collect();
            let flags = frame[4];
            let stream = u32::from_be_bytes([frame[5] & 0x7f, frame[6], frame[7], frame[8]]);
            let payload = &frame[9..];
            match typ {
                HEADERS => {
                    if self.block.is_some() {
                        return Err(bad("HEADERS inside a header block"));
                    }
                    let mut off = 0;
                    let pad = if flags & PADDED != 0 {
                        off = 1;
                        usize::from(*payload.first().ok_or_else(|| bad("a padded HEADERS frame without padding"))?)
                    } else {
                        0
                    };
                    let priority = if flags & PRIORITY != 0 {
                        let p: [u8; 5] = payload
                            .get(off..off + 5)
                            .and_then(|p| p.try_into().ok())
                            .ok_or_else(|| bad("a HEADERS frame too short for its priority"))?;
                        off += 5;
                        Some(p)
                    } else {
                        None
                    };
                    let end = payload.len().checked_sub(pad).filter(|e| *e >= off).ok_or_else(|| bad("bad padding"))?;
                    self.block = Some(Block { stream, flags, priority, data: payload[off..end].to_vec() });
                }
                _ => {
                    let b = self.block.as_mut().ok_or_else(|| bad("CONTINUATION without HEADERS"))?;
                    if b.stream != stream {
                        return Err(bad("CONTINUATION on another stream"));
                    }
                    b.data.extend_from_slice(payload);
                }
            }
            if self.block.as_ref().is_some_and(|b| b.data.len() > MAX_BLOCK) {
                return Err(bad("a header block larger than 16 KiB"));
            }
            if flags & END_HEADERS != 0 {
                if let Some(b) = self.block.take() {
                    self.rewrite(b)?;
                }
            }
        }
    }

    /// Decodes a whole header block and sends it on as literals.
    fn rewrite(&mut self, b: Block) -> io::Result<()> {
        check_block(&b.data)?;
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        let mut over = false;
        self.decoder
            .decode_with_cb(&b.data, |name, value| {
                decoded += name.len() + value.len() + 32;
                if decoded > MAX_DECODED {
                    over = true;
                } else if !over {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| bad(&format!("HPACK: {e:?}")))?;
        if over {
            return Err(bad("a header list larger than 64 KiB"));
        }
        let mut block = Vec::with_capacity(b.data.len() + 64);
        for (name, value) in &headers {
            let value: &[u8] =
                if name.as_slice() == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                    b"localhost"
                } else {
                    value
                };
            block.push(0x00); // literal header field without indexing, new name
            literal(&mut block, name);
            literal(&mut block, value);
        }
        let mut first = Vec::new();
        if let Some(p) = b.priority {
            first.extend_from_slice(&p);
        }
        let room = MAX_FRAME - first.len();
        let mut chunks = block.chunks(room.max(1)).peekable();
        let head = chunks.next().unwrap_or(&[]);
        first.extend_from_slice(head);
        let mut flags = b.flags & (END_STREAM | PRIORITY);
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, b.stream, &first);
        while let Some(c) = chunks.next() {
            let flags = if chunks.peek().is_none() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, b.stream, c);
        }
        Ok(())
    }

    fn frame(&mut self, typ: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len();
        self.output.extend_from_slice(&[low_byte(len >> 16), low_byte(len >> 8), low_byte(len), typ, flags]);
        self.output.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        self.output.extend_from_slice(payload);
    }
}

/// Walks a header block's representations (RFC 7541, section 6) before it
/// is decoded: every integer and string length is within the block, and a
/// dynamic table size update comes first and stays within [`MAX_TABLE`]
/// (the decoder would take any size a client asks for).
fn check_block(mut b: &[u8]) -> io::Result<()> {
    let mut first = true;
    while let Some(&byte) = b.first() {
        let (prefix, strings) = match byte {
            0x80..=0xff => (7, 0),          // indexed field
            0x40..=0x7f => (6, 1),          // literal with incremental indexing
            0x20..=0x3f => (5, usize::MAX), // dynamic table size update
            _ => (4, 1),                    // literal without indexing / never indexed
        };
        let (value, used) = read_integer(b, prefix)?;
        b = &b[used..];
        if strings == usize::MAX {
            if !first || value > MAX_TABLE {
                return Err(bad("a dynamic table size update that is not first or is above 4096"));
            }
            continue;
        }
        first = false;
        // A literal with a new name (index 0) carries the name's string too.
        let count = if strings == 1 && value == 0 { 2 } else { strings };
        for _ in 0..count {
            let (len, used) = read_integer(b, 7)?;
            b = b.get(used + len..).ok_or_else(|| bad("a string past the header block's end"))?;
        }
    }
    Ok(())
}

/// An HPACK integer with an `n`-bit prefix: its value and the bytes it used.
fn read_integer(b: &[u8], n: u32) -> io::Result<(usize, usize)> {
    let max = (1usize << n) - 1;
    let first = usize::from(*b.first().ok_or_else(|| bad("an integer past the block's end"))?) & max;
    if first < max {
        return Ok((first, 1));
    }
    let mut value = max;
    for (i, byte) in b.iter().enumerate().skip(1).take(4) {
        value += usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(bad("an HPACK integer too long"))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 from the client: {what}"))
}

/// An HPACK string literal without Huffman coding (7-bit prefix length).
fn literal(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix, `first` holding the flag bits.
fn integer(out: &mut Vec<u8>, mut v: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | low_byte(v));
        return;
    }
    out.push(first | low_byte(max));
    v -= max;
    while v >= 128 {
        out.push(low_byte(v % 128) | 0x80);
        v /= 128;
    }
    out.push(low_byte(v));
}

/// The low eight bits of `v` (frame and HPACK headers are written byte by byte).
fn low_byte(v: usize) -> u8 {
    (v & 0xff).to_le_bytes()[0]
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.output.is_empty() {
                let n = buf.remaining().min(this.output.len());
                buf.put_slice(&this.output[..n]);
                this.output.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // The client is done: what is left (half a frame) goes as it is.
                    this.eof = true;
                    this.output.append(&mut this.input);
                }
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(rb.filled());
                    this.process()?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = AuthorityFix::new(tokio::io::empty());
        f.frame(typ, flags, stream, payload);
        f.output
    }

    /// A header block the way a client's encoder may write it: indexed
    /// names, literals with incremental indexing, and an index into the
    /// dynamic table in the second block.
    fn client_blocks(authority: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut first = vec![0x83, 0x86]; // :method POST, :scheme http
        first.push(0x41); // :authority, literal with incremental indexing (name index 1)
        literal(&mut first, authority);
        first.push(0x44); // :path, with indexing
        literal(&mut first, b"/berth.v1.NodeAgent/GetNode");
        // The second block refers to both through the dynamic table (62, 63).
        let second = vec![0x83, 0x86, 0xbf, 0xbe];
        (first, second)
    }

    async fn through(bytes: Vec<u8>) -> Vec<u8> {
        let mut fix = AuthorityFix::new(std::io::Cursor::new(bytes));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        out
    }

    fn decode_all(mut out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert!(out.starts_with(PREFACE));
        out = &out[PREFACE.len()..];
        let mut d = hpack::Decoder::new();
        let mut blocks = Vec::new();
        while out.len() >= 9 {
            let len = usize::from(out[0]) << 16 | usize::from(out[1]) << 8 | usize::from(out[2]);
            if out[3] == HEADERS {
                blocks.push(d.decode(&out[9..9 + len]).unwrap());
            }
            out = &out[9 + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_table_stays_in_step() {
        let (a, b) = client_blocks(b"tmp%2Fberth%2Fagent.sock");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS, passed on
        input.extend(frame(HEADERS, END_HEADERS, 1, &a));
        input.extend(frame(0x0, END_STREAM, 1, b"data")); // DATA, passed on
                                                          // The second block split over a CONTINUATION frame, padded.
        let mut padded = vec![3u8];
        padded.extend_from_slice(&b[..2]);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, &b[2..]));
        let out = through(input).await;
        let blocks = decode_all(&out);
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            let authority = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
            assert!(block.iter().any(|(n, v)| n == b":path" && v == b"/berth.v1.NodeAgent/GetNode"));
        }
        assert!(out.windows(4).any(|w| w == b"data"), "other frames pass through");
    }

    #[tokio::test]
    async fn a_valid_authority_is_kept() {
        let (a, _) = client_blocks(b"localhost:7070");
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &a));
        let blocks = decode_all(&through(input).await);
        assert!(blocks[0].iter().any(|(n, v)| n == b":authority" && v == b"localhost:7070"));
    }

    async fn refused(frames: Vec<Vec<u8>>) -> bool {
        let mut input = PREFACE.to_vec();
        for f in frames {
            input.extend(f);
        }
        let mut fix = AuthorityFix::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.is_err()
    }

    #[tokio::test]
    async fn malformed_or_oversized_http2_closes_the_connection() {
        let (a, _) = client_blocks(b"x");
        // CONTINUATION without HEADERS, on another stream, HEADERS inside a block.
        assert!(refused(vec![frame(CONTINUATION, END_HEADERS, 1, b"x")]).await);
        assert!(refused(vec![frame(HEADERS, 0, 1, &a[..2]), frame(CONTINUATION, END_HEADERS, 3, &a[2..])]).await);
        assert!(refused(vec![frame(HEADERS, 0, 1, &a[..2]), frame(HEADERS, END_HEADERS, 3, &a)]).await);
        // A header frame larger than the frame size.
        assert!(refused(vec![frame(HEADERS, END_HEADERS, 1, &vec![0x82; MAX_FRAME + 1])]).await);
        // A table size update above 4096, or not first.
        assert!(refused(vec![frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x7f, 0x82])]).await);
        assert!(refused(vec![frame(HEADERS, END_HEADERS, 1, &[0x82, 0x20])]).await);
        // A truncated integer or string.
        assert!(refused(vec![frame(HEADERS, END_HEADERS, 1, &[0x3f])]).await);
        assert!(refused(vec![frame(HEADERS, END_HEADERS, 1, &[0x00, 0x05, b'a'])]).await);
        // Amplification: one 4000-byte entry referred to thousands of times.
        let mut block = vec![0x40];
        literal(&mut block, b"x-big");
        literal(&mut block, &[b'a'; 4000]);
        block.extend(std::iter::repeat_n(0xbe, 5000));
        assert!(block.len() < MAX_BLOCK);
        assert!(refused(vec![frame(HEADERS, END_HEADERS, 1, &block)]).await, "a block decoding to 20 MB");
        // A valid block with PRIORITY and PADDED together passes.
        let mut p = vec![2u8, 0, 0, 0, 0, 16];
        p.extend_from_slice(&a);
        p.extend_from_slice(&[0, 0]);
        assert!(!refused(vec![frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &p)]).await);
    }

    #[tokio::test]
    async fn large_data_frames_pass_through_as_they_come() {
        let mut input = PREFACE.to_vec();
        let data = vec![7u8; 100_000];
        input.extend(frame(0x0, 0, 1, &data));
        let out = through(input).await;
        assert_eq!(out.len(), PREFACE.len() + 9 + data.len());
    }
}
