//! The task's `run_options`: a string of `docker create` flags, parsed with
//! shell-word rules. Every flag is either honoured or refused by name; none is
//! silently ignored. Supported so far: `--rm` (accepted; the agent always removes
//! the container), `-w/--workdir`, `-e/--env KEY=VALUE`.
//!
//! Forms accepted, as docker's flag parser does: `--flag value`, `--flag=value`,
//! `-f value`, `-f=value`, `-fvalue`.

use super::env::check_name;
use super::SpecError;

/// Run options after parsing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub remove: bool,
    pub workdir: Option<String>,
    /// `KEY=VALUE` from `-e`, in order.
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Copy)]
enum Flag {
    Rm,
    Workdir,
    Env,
}

impl Flag {
    fn lookup(name: &str) -> Option<Self> {
        Some(match name {
            "--rm" => Flag::Rm,
            "-w" | "--workdir" => Flag::Workdir,
            "-e" | "--env" => Flag::Env,
            _ => return None,
        })
    }
    fn takes_value(self) -> bool {
        !matches!(self, Flag::Rm)
    }
}

fn bad(flag: &str, reason: impl Into<String>) -> SpecError {
    SpecError::RunOption { flag: flag.to_owned(), reason: reason.into() }
}

/// Splits `name=value` / `-xvalue` forms into the flag name and an inline value.
fn split_flag(arg: &str) -> (&str, Option<&str>) {
    if let Some(long) = arg.strip_prefix("--") {
        return match long.split_once('=') {
            Some((n, v)) => (&arg[..n.len() + 2], Some(v)),
            None => (arg, None),
        };
    }
    // A short flag: "-w", "-w=/x", "-w/x".
    if arg.len() > 2 && arg.is_char_boundary(2) {
        let rest = &arg[2..];
        return (&arg[..2], Some(rest.strip_prefix('=').unwrap_or(rest)));
    }
    (arg, None)
}

pub fn parse(text: &str) -> Result<RunOptions, SpecError> {
    let words = shell_words::split(text).map_err(|e| bad("run_options", e.to_string()))?;
    let mut out = RunOptions::default();
    let mut iter = words.iter();
    while let Some(arg) = iter.next() {
        if !arg.starts_with('-') || arg == "-" || arg == "--" {
            return Err(bad(
                arg,
                "unexpected argument: run options take only flags (the command goes in the command line)",
            ));
        }
        let (name, inline) = split_flag(arg);
        let flag = Flag::lookup(name).ok_or_else(|| bad(name, "unknown or unsupported run option"))?;
        let value = match (flag.takes_value(), inline) {
            (false, None) => None,
            (false, Some(_)) => return Err(bad(name, "takes no value")),
            (true, Some(v)) => Some(v.to_owned()),
            (true, None) => Some(iter.next().cloned().ok_or_else(|| bad(name, "needs a value"))?),
        };
        let value = value.unwrap_or_default();
        match flag {
            Flag::Rm => out.remove = true,
            Flag::Workdir => {
                if !value.starts_with('/') {
                    return Err(bad(name, format!("{value:?} is not an absolute path")));
                }
                out.workdir = Some(value);
            }
            Flag::Env => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    bad(
                        name,
                        format!(
                            "{value:?} is not KEY=VALUE (taking values from the agent's environment is not supported)"
                        ),
                    )
                })?;
                check_name(k).map_err(|e| bad(name, e.to_string()))?;
                out.env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_supported_flags_in_every_form() {
        let cases: &[(&str, RunOptions)] = &[
            ("", RunOptions::default()),
            ("--rm", RunOptions { remove: true, ..Default::default() }),
            ("--rm --workdir /", RunOptions { remove: true, workdir: Some("/".into()), ..Default::default() }),
            ("--workdir=/app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
            ("-w /app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
            ("-w=/app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
            ("-w/app", RunOptions { workdir: Some("/app".into()), ..Default::default() }),
            ("'--workdir' '/my dir'", RunOptions { workdir: Some("/my dir".into()), ..Default::default() }),
            (
                "-e A=1 --env B=two=2 --env=C= -eD=4",
                RunOptions {
                    env: vec![
                        ("A".into(), "1".into()),
                        ("B".into(), "two=2".into()),
                        ("C".into(), "".into()),
                        ("D".into(), "4".into()),
                    ],
                    ..Default::default()
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn refuses_by_name() {
        let cases = [
            ("--privileged", "--privileged"),
            ("--rm --bogus=1", "--bogus"),
            ("-x", "-x"),
            ("--workdir", "--workdir"),
            ("--workdir relative", "--workdir"),
            ("--rm=true", "--rm"),
            ("-e NOVALUE", "-e"),
            ("-e AZ_BATCH_NODE_ID=x", "-e"),
            ("busybox", "busybox"),
            ("--rm \"unclosed", "run_options"),
        ];
        for (text, flag) in cases {
            match parse(text) {
                Err(SpecError::RunOption { flag: f, .. }) => assert_eq!(f, flag, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
