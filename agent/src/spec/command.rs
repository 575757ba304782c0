//! The process argv, by the Batch command-line rules: an empty command line runs
//! the image's ENTRYPOINT + CMD unchanged; otherwise the command line is split into
//! words with POSIX shell quoting rules (no shell runs it: `$VAR` stays as is) and
//! replaces both ENTRYPOINT and CMD.

use super::SpecError;
use crate::images::ImageConfig;

/// Splits a non-empty command line; checks it at acceptance time too.
pub(super) fn split(command_line: &str) -> Result<Vec<String>, SpecError> {
    let words = shell_words::split(command_line).map_err(|e| SpecError::CommandLine { reason: e.to_string() })?;
    if words.iter().any(|w| w.contains('\0')) {
        return Err(SpecError::CommandLine { reason: "contains NUL".into() });
    }
    Ok(words)
}

/// The argv of the task's process. `entrypoint` is the `--entrypoint` run
/// option (one executable, not split): it replaces the image's ENTRYPOINT, and then an empty command line
/// means no arguments rather than the image's CMD (docker's rule); `""` clears
/// the ENTRYPOINT and keeps the CMD.
pub(super) fn argv(
    command_line: &str,
    image: &ImageConfig,
    entrypoint: Option<&str>,
) -> Result<Vec<String>, SpecError> {
    let given = !command_line.trim().is_empty();
    let args: Vec<String> = match entrypoint {
        Some("") if given => split(command_line)?,
        Some("") => image.cmd.clone(),
        Some(ep) => {
            let mut a = vec![ep.to_owned()];
            if given {
                a.extend(split(command_line)?);
            }
            a
        }
        None if given => split(command_line)?,
        None => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_line_rules() {
        let ep = image(&["/bin/echo", "from-entrypoint"], &["default-cmd"]);
        let cases: &[(&str, &ImageConfig, &[&str])] = &[
            ("", &ep, &["/bin/echo", "from-entrypoint", "default-cmd"]),
            ("   ", &ep, &["/bin/echo", "from-entrypoint", "default-cmd"]),
            ("/bin/true", &ep, &["/bin/true"]),
            (
                r#"/bin/sh -c "echo 'hello world' > $AZ_BATCH_TASK_WORKING_DIR/output.txt""#,
                &ep,
                &["/bin/sh", "-c", "echo 'hello world' > $AZ_BATCH_TASK_WORKING_DIR/output.txt"],
            ),
            (r"a\ b 'c d' e", &ep, &["a b", "c d", "e"]),
            ("", &image(&[], &["sh"]), &["sh"]),
            ("", &image(&["/entry"], &[]), &["/entry"]),
        ];
        for (line, img, want) in cases {
            assert_eq!(argv(line, img, None).unwrap(), *want, "{line:?}");
        }
    }

    #[test]
    fn entrypoint_option() {
        let ep = image(&["/bin/echo", "from-entrypoint"], &["default-cmd"]);
        let cases: &[(&str, &str, &[&str])] = &[
            ("", "/bin/cat", &["/bin/cat"]),
            ("a b", "/bin/cat", &["/bin/cat", "a", "b"]),
            ("", "", &["default-cmd"]),
            ("x y", "", &["x", "y"]),
        ];
        for (line, entry, want) in cases {
            assert_eq!(argv(line, &ep, Some(entry)).unwrap(), *want, "{line:?} {entry:?}");
        }
    }

    #[test]
    fn errors() {
        assert!(matches!(argv("", &ImageConfig::default(), None), Err(SpecError::NoCommand)));
        assert!(matches!(argv("", &ImageConfig::default(), Some("")), Err(SpecError::NoCommand)));
        assert!(matches!(argv("echo \"unclosed", &ImageConfig::default(), None), Err(SpecError::CommandLine { .. })));
    }
}
