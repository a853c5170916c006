//! Settings beneath the flags: a TOML file (`--config FILE`) whose keys are the subcommand's
//! long flags without their dashes, under the `FERRY_*` environment variables, under the flags
//! themselves, so that a service's unit file needs no secrets on its command line (as mongosync
//! takes a config file). The file's settings become arguments for clap, added only where
//! neither a flag nor its variable gives one; clap then checks them like typed ones.

use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, Command};
use toml::Value;

/// `args` with the `--config` file's settings added as arguments; the error is one line.
pub fn with_config(args: Vec<OsString>, command: &Command) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&args).or_else(|| std::env::var_os("FERRY_CONFIG")) else {
        return Ok(args);
    };
    let path = Path::new(&path);
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read --config {}: {e}; give a readable TOML file",
            path.display()
        )
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!(
            "--config {} is not valid TOML: {}",
            path.display(),
            e.message()
        )
    })?;
    let Some((at, name)) = subcommand(&args, command) else {
        return Ok(args);
    };
    let sub = command.find_subcommand(&name).expect("found by name");
    let mut added = Vec::new();
    for (key, value) in &table {
        let arg = sub
            .get_arguments()
            .chain(command.get_arguments())
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| {
                format!(
                    "--config {}: `{key}` is not a setting of `ferry {name}`; the settings are its long flags without the dashes (see `ferry {name} --help`)",
                    path.display()
                )
            })?;
        let flag = format!("--{key}");
        let typed = args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        });
        let from_env = arg.get_env().is_some_and(|v| std::env::var_os(v).is_some());
        if typed || from_env {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        added.extend(arguments(&flag, value, switch).ok_or_else(|| {
            format!(
                "--config {}: `{key}` must be {}",
                path.display(),
                if switch {
                    "true or false"
                } else {
                    "a string, a number or a list of them"
                }
            )
        })?);
    }
    let mut args = args;
    args.splice(at + 1..at + 1, added);
    Ok(args)
}

/// The value of `--config FILE` or `--config=FILE`.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut tokens = args.iter();
    while let Some(token) = tokens.next() {
        if token == "--config" {
            return tokens.next().cloned();
        }
        if let Some(path) = token.to_str().and_then(|t| t.strip_prefix("--config=")) {
            return Some(path.into());
        }
    }
    None
}

/// Where the subcommand's name is in `args`, and the name.
fn subcommand(args: &[OsString], command: &Command) -> Option<(usize, String)> {
    let mut skip_value = false;
    for (i, token) in args.iter().enumerate().skip(1) {
        let token = token.to_str()?;
        if skip_value {
            skip_value = false;
            continue;
        }
        if token == "--config" || token == "--log-format" {
            skip_value = true;
            continue;
        }
        if token.starts_with('-') {
            continue;
        }
        return command
            .find_subcommand(token)
            .map(|sub| (i, sub.get_name().to_string()));
    }
    None
}

/// The arguments that give `flag` the value `value`; `None` when the value has the wrong type.
fn arguments(flag: &str, value: &Value, switch: bool) -> Option<Vec<OsString>> {
    let scalar = |value: &Value| match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(n) => Some(n.to_string()),
        Value::Float(n) => Some(n.to_string()),
        _ => None,
    };
    match (value, switch) {
        (Value::Boolean(true), true) => Some(vec![flag.into()]),
        (Value::Boolean(false), true) => Some(vec![]),
        (_, true) => None,
        (Value::Array(items), false) => items
            .iter()
            .map(|item| Some([flag.into(), scalar(item)?.into()]))
            .collect::<Option<Vec<[OsString; 2]>>>()
            .map(|pairs| pairs.into_iter().flatten().collect()),
        (value, false) => Some(vec![flag.into(), scalar(value)?.into()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn command() -> Command {
        Command::new("ferry")
            .arg(Arg::new("config").long("config").global(true))
            .subcommand(
                Command::new("check")
                    .arg(
                        Arg::new("source")
                            .long("source")
                            .env("FERRY_TEST_CONFIG_SOURCE"),
                    )
                    .arg(
                        Arg::new("include")
                            .long("include")
                            .action(ArgAction::Append),
                    )
                    .arg(Arg::new("drop").long("drop").action(ArgAction::SetTrue))
                    .arg(Arg::new("lanes").long("lanes")),
            )
    }

    fn run(file: &str, typed: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, file).unwrap();
        let mut args: Vec<OsString> = vec!["ferry".into(), "--config".into(), path.clone().into()];
        args.extend(typed.iter().map(OsString::from));
        let out = with_config(args, &command())?;
        Ok(out[3..]
            .iter()
            .map(|a| a.to_str().unwrap().to_string())
            .collect())
    }

    #[test]
    fn file_settings_become_arguments_where_no_flag_gives_one() {
        let file = "source = \"mongodb://a/\"\ninclude = [\"shop\", \"crm.users\"]\ndrop = true\nlanes = 8\n";
        // Settings come in the file's key order (sorted), after the subcommand.
        assert_eq!(
            run(file, &["check", "--lanes", "2"]).unwrap(),
            [
                "check",
                "--drop",
                "--include",
                "shop",
                "--include",
                "crm.users",
                "--source",
                "mongodb://a/",
                "--lanes",
                "2"
            ]
        );
        assert_eq!(run("drop = false\n", &["check"]).unwrap(), ["check"]);
    }

    #[test]
    fn mistakes_in_the_file_are_one_line_that_names_the_setting() {
        let unknown = run("sauce = \"x\"\n", &["check"]).unwrap_err();
        assert!(
            unknown.contains("`sauce` is not a setting of `ferry check`"),
            "{unknown}"
        );
        let switch = run("drop = \"yes\"\n", &["check"]).unwrap_err();
        assert!(switch.contains("`drop` must be true or false"), "{switch}");
        let broken = run("source = \n", &["check"]).unwrap_err();
        assert!(broken.contains("is not valid TOML"), "{broken}");
        assert!(!broken.contains('\n'), "{broken}");
    }
}
