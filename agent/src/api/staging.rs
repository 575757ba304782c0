//! Resource and output files between the scheduler API and the domain: each
//! one checked here, so RunTask refuses a bad one with INVALID_ARGUMENT (no
//! record, no directory). Errors name the entry and never repeat a URL.

use super::error::DecodeError;
use crate::model::{
    check_packages, file_mode, relative_path, AppPackage, OutputFile, PackageId, ResourceFile, ResourceSource,
    SecretUrl, Staging, UploadCondition, MAX_OUTPUT_FILES, MAX_RESOURCE_FILES,
};
use berth_proto::v1 as pb;

/// Upload headers per output file, at most.
const MAX_HEADERS: usize = 32;

pub(super) fn decode(resources: Vec<pb::ResourceFile>, outputs: Vec<pb::OutputFile>) -> Result<Staging, DecodeError> {
    if resources.len() > MAX_RESOURCE_FILES {
        let reason = format!("has {} entries; at most {MAX_RESOURCE_FILES}", resources.len());
        return Err(DecodeError::new("resource_files", reason));
    }
    if outputs.len() > MAX_OUTPUT_FILES {
        return Err(DecodeError::new(
            "output_files",
            format!("has {} entries; at most {MAX_OUTPUT_FILES}", outputs.len()),
        ));
    }
    let resource_files = resources
        .into_iter()
        .enumerate()
        .map(|(i, r)| resource(r).map_err(|e| DecodeError::new("resource_files", format!("[{i}]: {e}"))))
        .collect::<Result<_, _>>()?;
    let output_files = outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| output(o).map_err(|e| DecodeError::new("output_files", format!("[{i}]: {e}"))))
        .collect::<Result<_, _>>()?;
    Ok(Staging { resource_files, output_files, application_packages: vec![] })
}

/// Application package references (a task's, or the node's).
pub(super) fn packages(
    field: &'static str,
    refs: Vec<pb::ApplicationPackageReference>,
) -> Result<Vec<AppPackage>, DecodeError> {
    let packages = refs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let id = PackageId::new(&r.application_id, &r.version).map_err(|e| format!("[{i}]: {e}"))?;
            let url = url("url", &r.url).map_err(|e| format!("[{i}]: {e}"))?;
            Ok(AppPackage { id, url })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| DecodeError::new(field, e))?;
    check_packages(&packages).map_err(|e| DecodeError::new(field, e))?;
    Ok(packages)
}

/// For TaskInfo.spec: URLs without their queries.
pub(super) fn encode_packages(packages: &[AppPackage]) -> Vec<pb::ApplicationPackageReference> {
    packages
        .iter()
        .map(|p| pb::ApplicationPackageReference {
            application_id: p.id.application_id.clone(),
            version: p.id.version.clone(),
            url: p.url.redacted(),
        })
        .collect()
}

fn url(field: &str, s: &str) -> Result<SecretUrl, String> {
    SecretUrl::parse(s).map_err(|e| format!("{field} {e}"))
}

fn resource(r: pb::ResourceFile) -> Result<ResourceFile, String> {
    let source = match (r.http_url.is_empty(), r.storage_container_url.is_empty()) {
        (false, true) => {
            if !r.blob_prefix.is_empty() {
                return Err("blob_prefix goes with storage_container_url, not http_url".into());
            }
            ResourceSource::Http(url("http_url", &r.http_url)?)
        }
        (true, false) => ResourceSource::Container {
            url: url("storage_container_url", &r.storage_container_url)?,
            prefix: r.blob_prefix,
        },
        (false, false) => return Err("give http_url or storage_container_url, not both".into()),
        (true, true) => return Err("give http_url or storage_container_url".into()),
    };
    let is_dir = matches!(source, ResourceSource::Container { .. });
    Ok(ResourceFile {
        source,
        file_path: relative_path("file_path", &r.file_path, is_dir)?,
        file_mode: file_mode(&r.file_mode)?,
    })
}

fn output(o: pb::OutputFile) -> Result<OutputFile, String> {
    if o.file_pattern.is_empty() {
        return Err("file_pattern is empty".into());
    }
    if o.file_pattern.contains('\0') {
        return Err("file_pattern holds a NUL byte".into());
    }
    glob::Pattern::new(&o.file_pattern).map_err(|e| format!("file_pattern {:?}: {e}", o.file_pattern))?;
    let Some(dest) = o.destination.and_then(|d| d.container) else {
        return Err("destination.container is required".into());
    };
    let container_url = url("destination.container.container_url", &dest.container_url)?;
    if dest.path.starts_with('/') || dest.path.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("destination.container.path {:?} must be a relative blob name without . or ..", dest.path));
    }
    if dest.upload_headers.len() > MAX_HEADERS {
        return Err(format!("has {} upload_headers; at most {MAX_HEADERS}", dest.upload_headers.len()));
    }
    let mut headers = Vec::new();
    for h in dest.upload_headers {
        let bad_name = http::HeaderName::from_bytes(h.name.as_bytes()).is_err();
        if bad_name || http::HeaderValue::from_str(&h.value).is_err() {
            return Err(format!("upload header {:?} is not a valid HTTP header", h.name));
        }
        let lower = h.name.to_ascii_lowercase();
        if matches!(lower.as_str(), "authorization" | "host" | "content-length" | "x-ms-blob-type" | "x-ms-version") {
            return Err(format!("upload header {:?} is set by the agent", h.name));
        }
        headers.push((h.name, h.value));
    }
    let condition = o.upload_options.map_or(0, |u| u.upload_condition);
    let condition = match pb::OutputFileUploadCondition::try_from(condition) {
        Ok(pb::OutputFileUploadCondition::TaskCompletion) => UploadCondition::TaskCompletion,
        Ok(pb::OutputFileUploadCondition::TaskSuccess) => UploadCondition::TaskSuccess,
        Ok(pb::OutputFileUploadCondition::TaskFailure) => UploadCondition::TaskFailure,
        Err(_) => return Err(format!("upload_options.upload_condition: unknown value {condition}")),
    };
    Ok(OutputFile { pattern: o.file_pattern, container_url, path: dest.path, headers, condition })
}

/// For TaskInfo.spec: URLs without their queries.
pub(super) fn encode(s: &Staging) -> (Vec<pb::ResourceFile>, Vec<pb::OutputFile>) {
    let resources = s
        .resource_files
        .iter()
        .map(|r| {
            let (http_url, storage_container_url, blob_prefix) = match &r.source {
                ResourceSource::Http(u) => (u.redacted(), String::new(), String::new()),
                ResourceSource::Container { url, prefix } => (String::new(), url.redacted(), prefix.clone()),
            };
            pb::ResourceFile {
                http_url,
                storage_container_url,
                blob_prefix,
                file_path: r.file_path.clone(),
                file_mode: format!("{:04o}", r.file_mode),
            }
        })
        .collect();
    let outputs = s
        .output_files
        .iter()
        .map(|o| pb::OutputFile {
            file_pattern: o.pattern.clone(),
            destination: Some(pb::OutputFileDestination {
                container: Some(pb::OutputFileBlobContainerDestination {
                    container_url: o.container_url.redacted(),
                    path: o.path.clone(),
                    upload_headers: o
                        .headers
                        .iter()
                        .map(|(name, value)| pb::HttpHeader { name: name.clone(), value: value.clone() })
                        .collect(),
                }),
            }),
            upload_options: Some(pb::OutputFileUploadOptions {
                upload_condition: match o.condition {
                    UploadCondition::TaskCompletion => pb::OutputFileUploadCondition::TaskCompletion,
                    UploadCondition::TaskSuccess => pb::OutputFileUploadCondition::TaskSuccess,
                    UploadCondition::TaskFailure => pb::OutputFileUploadCondition::TaskFailure,
                } as i32,
            }),
        })
        .collect();
    (resources, outputs)
}

/// A package on the node, for GetNode and ConfigureApplicationPackages.
pub(super) fn package_info(p: &crate::supervisor::PackageStatus) -> pb::ApplicationPackageInfo {
    pb::ApplicationPackageInfo {
        application_id: p.id.application_id.clone(),
        version: p.id.version.clone(),
        path: p.path.display().to_string(),
        node_level: p.node_level,
        task_references: p.task_references,
        environment_variables: p.id.env_names(),
    }
}

/// A task's transfers under way, for TaskInfo.
pub(super) fn progress(p: &crate::staging::Progress) -> pb::StagingProgress {
    pb::StagingProgress {
        direction: if p.upload { "upload" } else { "download" }.into(),
        files_done: p.files_done,
        files_total: p.files_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str, path: &str) -> pb::ResourceFile {
        pb::ResourceFile { http_url: url.into(), file_path: path.into(), ..Default::default() }
    }

    fn out(pattern: &str, url: &str) -> pb::OutputFile {
        pb::OutputFile {
            file_pattern: pattern.into(),
            destination: Some(pb::OutputFileDestination {
                container: Some(pb::OutputFileBlobContainerDestination {
                    container_url: url.into(),
                    ..Default::default()
                }),
            }),
            upload_options: None,
        }
    }

    fn refusal(r: Vec<pb::ResourceFile>, o: Vec<pb::OutputFile>) -> String {
        decode(r, o).unwrap_err().to_string()
    }

    #[test]
    fn resource_files_are_checked_one_by_one() {
        let ok = http("https://h/a?sig=SECRET", "in/a.txt");
        let s = decode(vec![ok.clone()], vec![]).unwrap();
        assert_eq!(s.resource_files[0].file_path, "in/a.txt");
        assert_eq!(s.resource_files[0].file_mode, 0o644);
        for (bad, says) in [
            (http("https://h/a?sig=SECRET", "/etc/passwd"), "absolute"),
            (http("https://h/a?sig=SECRET", "../x"), ".."),
            (http("https://h/a?sig=SECRET", ""), "empty"),
            (http("ftp://h/a?sig=SECRET", "a"), "scheme"),
            (pb::ResourceFile { file_mode: "4755".into(), ..http("https://h/a?sig=SECRET", "a") }, "file_mode"),
            (pb::ResourceFile { storage_container_url: "https://h/c".into(), ..http("https://h/a", "a") }, "not both"),
            (pb::ResourceFile { file_path: "a".into(), ..Default::default() }, "give http_url"),
        ] {
            let e = refusal(vec![ok.clone(), bad], vec![]);
            assert!(e.contains("resource_files") && e.contains("[1]") && e.contains(says), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        let dir = pb::ResourceFile { storage_container_url: "http://h/acct/con?sig=S".into(), ..Default::default() };
        assert_eq!(decode(vec![dir], vec![]).unwrap().resource_files[0].file_path, "");
    }

    #[test]
    fn output_files_are_checked_one_by_one() {
        let s = decode(vec![], vec![out("**/*.txt", "http://h/acct/con?sig=S")]).unwrap();
        assert_eq!(s.output_files[0].condition, UploadCondition::TaskCompletion);
        let mut no_dest = out("a", "http://h/c");
        no_dest.destination = None;
        let mut bad_header = out("a", "http://h/c");
        bad_header.destination.as_mut().unwrap().container.as_mut().unwrap().upload_headers =
            vec![pb::HttpHeader { name: "x-ms-blob-type".into(), value: "PageBlob".into() }];
        let mut bad_cond = out("a", "http://h/c");
        bad_cond.upload_options = Some(pb::OutputFileUploadOptions { upload_condition: 9 });
        let mut bad_path = out("a", "http://h/c");
        bad_path.destination.as_mut().unwrap().container.as_mut().unwrap().path = "../x".into();
        for (bad, says) in [
            (out("", "http://h/c"), "empty"),
            (out("[", "http://h/c"), "file_pattern"),
            (out("a", "nope?sig=SECRET"), "container_url"),
            (no_dest, "destination"),
            (bad_header, "set by the agent"),
            (bad_cond, "upload_condition"),
            (bad_path, "path"),
        ] {
            let e = refusal(vec![], vec![bad]);
            assert!(e.contains("output_files[0]") || e.contains("[0]"), "{e}");
            assert!(e.contains(says) && !e.contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn encoded_specs_show_no_query() {
        let s = decode(vec![http("https://h/a?sig=SECRET", "a")], vec![out("*.txt", "https://h/acct/con?sig=SECRET")])
            .unwrap();
        let (r, o) = encode(&s);
        let shown = format!("{r:?}{o:?}");
        assert!(!shown.contains("SECRET") && shown.contains("<redacted>"), "{shown}");
        assert_eq!(r[0].file_mode, "0644");
    }
}
