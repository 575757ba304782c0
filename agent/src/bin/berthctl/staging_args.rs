//! `--resource-file`, `--output-file` and `--app-package`: comma-separated `key=value` items,
//! like docker's `--mount`. Each item splits at its first `=`; a comma inside
//! a URL is written percent-encoded (`%2C`).

use berth_proto::v1 as pb;
use std::collections::BTreeMap;

fn items(flag: &str, s: &str, known: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("{flag}: {item:?} is not key=value"));
        };
        if !known.contains(&k) {
            return Err(format!("{flag}: unknown key {k:?} (known: {})", known.join(", ")));
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("{flag}: {k} given twice"));
        }
    }
    Ok(out)
}

/// `url=URL,path=PATH[,mode=0755]` or `container=URL[,prefix=P][,path=DIR][,mode=M]`.
pub(crate) fn resource_file(s: &str) -> Result<pb::ResourceFile, String> {
    let mut m = items("--resource-file", s, &["url", "container", "prefix", "path", "mode"])?;
    let mut take = |k: &str| m.remove(k).unwrap_or_default();
    let (http_url, storage_container_url) = (take("url"), take("container"));
    if http_url.is_empty() == storage_container_url.is_empty() {
        return Err("--resource-file: give url=URL or container=URL".into());
    }
    Ok(pb::ResourceFile {
        http_url,
        storage_container_url,
        blob_prefix: take("prefix"),
        file_path: take("path"),
        file_mode: take("mode"),
    })
}

/// `pattern=PATTERN,container=URL[,path=P][,condition=success|failure|completion][,content-type=T]`.
pub(crate) fn output_file(s: &str) -> Result<pb::OutputFile, String> {
    let mut m = items("--output-file", s, &["pattern", "container", "path", "condition", "content-type"])?;
    let mut take = |k: &str| m.remove(k).unwrap_or_default();
    let (pattern, container) = (take("pattern"), take("container"));
    if pattern.is_empty() || container.is_empty() {
        return Err("--output-file: pattern=PATTERN and container=URL are required".into());
    }
    let condition = match take("condition").as_str() {
        "" | "completion" => pb::OutputFileUploadCondition::TaskCompletion,
        "success" => pb::OutputFileUploadCondition::TaskSuccess,
        "failure" => pb::OutputFileUploadCondition::TaskFailure,
        other => return Err(format!("--output-file: condition {other:?} is not success, failure or completion")),
    };
    let content_type = take("content-type");
    let upload_headers = if content_type.is_empty() {
        vec![]
    } else {
        vec![pb::HttpHeader { name: "Content-Type".into(), value: content_type }]
    };
    Ok(pb::OutputFile {
        file_pattern: pattern,
        destination: Some(pb::OutputFileDestination {
            container: Some(pb::OutputFileBlobContainerDestination {
                container_url: container,
                path: take("path"),
                upload_headers,
            }),
        }),
        upload_options: Some(pb::OutputFileUploadOptions { upload_condition: condition as i32 }),
    })
}

/// `id=ID,version=V,url=URL`.
pub(crate) fn app_package(s: &str) -> Result<pb::ApplicationPackageReference, String> {
    let mut m = items("--app-package", s, &["id", "version", "url"])?;
    let mut take = |k: &str| m.remove(k).unwrap_or_default();
    let (application_id, version, url) = (take("id"), take("version"), take("url"));
    if application_id.is_empty() || version.is_empty() || url.is_empty() {
        return Err("--app-package: id=ID, version=V and url=URL are required".into());
    }
    Ok(pb::ApplicationPackageReference { application_id, version, url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_packages_parse_with_all_three_keys() {
        let p = app_package("id=blender,version=2.79,url=http://h/b.zip?sig=a%2Cb").unwrap();
        assert_eq!(
            (p.application_id.as_str(), p.version.as_str(), p.url.as_str()),
            ("blender", "2.79", "http://h/b.zip?sig=a%2Cb")
        );
        assert!(app_package("id=a,url=u").unwrap_err().contains("required"));
        assert!(app_package("id=a,version=1,url=u,path=x").unwrap_err().contains("unknown key"));
    }

    #[test]
    fn resource_files_parse_like_docker_mounts() {
        let r = resource_file("url=https://h/a?sv=1&sig=x%2Cy,path=in/a,mode=0755").unwrap();
        assert_eq!(
            (r.http_url.as_str(), r.file_path.as_str(), r.file_mode.as_str()),
            ("https://h/a?sv=1&sig=x%2Cy", "in/a", "0755")
        );
        let c = resource_file("container=https://h/c?sig=s,prefix=data/,path=inputs").unwrap();
        assert_eq!((c.storage_container_url.as_str(), c.blob_prefix.as_str()), ("https://h/c?sig=s", "data/"));
        assert!(resource_file("path=a").unwrap_err().contains("url=URL or container=URL"));
        assert!(resource_file("url=u,container=c").is_err());
        assert!(resource_file("url=u,colour=red").unwrap_err().contains("unknown key"));
        assert!(resource_file("url=u,url=v").unwrap_err().contains("twice"));
        assert!(resource_file("url").unwrap_err().contains("key=value"));
    }

    #[test]
    fn output_files_parse_with_their_condition_and_type() {
        let o = output_file(
            "pattern=**/*.txt,container=https://h/c?sig=s,path=run1,condition=failure,content-type=text/plain",
        )
        .unwrap();
        let dest = o.destination.unwrap().container.unwrap();
        assert_eq!((o.file_pattern.as_str(), dest.path.as_str()), ("**/*.txt", "run1"));
        assert_eq!(dest.upload_headers[0].value, "text/plain");
        assert_eq!(o.upload_options.unwrap().upload_condition, pb::OutputFileUploadCondition::TaskFailure as i32);
        let d = output_file("pattern=a,container=u").unwrap();
        assert_eq!(d.upload_options.unwrap().upload_condition, pb::OutputFileUploadCondition::TaskCompletion as i32);
        assert!(output_file("pattern=a").is_err());
        assert!(output_file("pattern=a,container=u,condition=sometimes").unwrap_err().contains("condition"));
    }
}
