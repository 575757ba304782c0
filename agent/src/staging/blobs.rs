//! Listing a blob container (`List Blobs`, paged by `NextMarker`), for a
//! resource file's `storage_container_url`.

use super::http::{check, network, retrying, Attempt};
use super::{StagingError, Transfers};
use crate::model::SecretUrl;
use serde::Deserialize;

/// Pages read at most (5,000 blobs each): a listing is bounded.
const MAX_PAGES: usize = 200;
/// One listing page's bytes, at most.
const MAX_PAGE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Blob {
    pub name: String,
    pub size: u64,
}

#[derive(Deserialize)]
struct EnumerationResults {
    #[serde(rename = "Blobs", default)]
    blobs: Blobs,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
struct Blobs {
    #[serde(rename = "Blob", default)]
    blob: Vec<BlobXml>,
}

#[derive(Deserialize)]
struct BlobXml {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Properties")]
    properties: Properties,
}

#[derive(Deserialize)]
struct Properties {
    #[serde(rename = "Content-Length", default)]
    content_length: u64,
}

/// One page: its blobs and the marker of the next.
fn parse_page(xml: &str) -> Result<(Vec<Blob>, Option<String>), String> {
    let page: EnumerationResults = quick_xml::de::from_str(xml).map_err(|e| format!("unreadable listing: {e}"))?;
    let blobs = page
        .blobs
        .blob
        .into_iter()
        // Directory markers (hierarchical namespaces) are no files.
        .filter(|b| !b.name.ends_with('/'))
        .map(|b| Blob { name: b.name, size: b.properties.content_length })
        .collect();
    Ok((blobs, page.next_marker.filter(|m| !m.is_empty())))
}

/// Every blob of the container whose name starts with `prefix`.
pub(super) async fn list(t: &Transfers, container: &SecretUrl, prefix: &str) -> Result<Vec<Blob>, StagingError> {
    let what = format!("listing {container}");
    let mut all = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url = container.full();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("restype", "container").append_pair("comp", "list");
            if !prefix.is_empty() {
                q.append_pair("prefix", prefix);
            }
            if let Some(m) = &marker {
                q.append_pair("marker", m);
            }
        }
        let page = retrying(t, &what, || {
            let (url, what) = (url.clone(), what.as_str());
            async move {
                let req = t.http().await.map_err(Attempt::Fatal)?;
                let req = req.get(url).header("x-ms-version", super::http::BLOB_API_VERSION);
                let mut resp = check(what, req.send().await.map_err(|e| network(what, e))?)?;
                let mut body = Vec::new();
                while let Some(c) = super::http::chunk(what, &mut resp, t.limits.stall_timeout).await? {
                    body.extend_from_slice(&c);
                    if body.len() > MAX_PAGE_BYTES {
                        return Err(Attempt::Fatal(StagingError::User(format!(
                            "{what}: a page over {MAX_PAGE_BYTES} bytes"
                        ))));
                    }
                }
                String::from_utf8(body).map_err(|_| Attempt::Retry(format!("{what}: not UTF-8")))
            }
        })
        .await?;
        let (blobs, next) = parse_page(&page).map_err(|e| StagingError::Server(format!("{what}: {e}")))?;
        all.extend(blobs);
        match next {
            Some(m) => marker = Some(m),
            None => return Ok(all),
        }
    }
    Err(StagingError::User(format!("{what}: more than {MAX_PAGES} pages of blobs")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_parsed_with_their_marker() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="http://h/a" ContainerName="c"><Prefix>d/</Prefix><Blobs><Blob><Name>d/a.txt</Name><Properties><Content-Length>5</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob><Blob><Name>d/sub/</Name><Properties><Content-Length>0</Content-Length></Properties></Blob><Blob><Name>d/sub/b &amp; c</Name><Properties><Content-Length>7</Content-Length></Properties></Blob></Blobs><NextMarker>2!abc</NextMarker></EnumerationResults>"#;
        let (blobs, next) = parse_page(xml).unwrap();
        assert_eq!(blobs, vec![Blob { name: "d/a.txt".into(), size: 5 }, Blob { name: "d/sub/b & c".into(), size: 7 }]);
        assert_eq!(next.as_deref(), Some("2!abc"));
        let empty = r#"<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>"#;
        assert_eq!(parse_page(empty).unwrap(), (vec![], None));
        assert!(parse_page("<nope").is_err());
    }
}
