//! The app's last step: its environment, its program on its PATH, execve, and the shell's
//! 126/127 when that fails.

use std::ffi::CString;

use nix::unistd;

use super::plan::AppPlan;
use crate::supervisor::StartError;

/// PATH an app gets when its manifest env has none (the OCI/Docker default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The app's environment as `NAME=value` strings: PATH and HOME defaults, then the manifest's
/// env (later wins), then `ARK_APP_NAME` and `ARK_POD_UUID`, which the app cannot override.
pub fn build_env(plan: &AppPlan, pod_uuid: &str, home: &str) -> Vec<String> {
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), home.into()),
    ];
    if plan.interactive || plan.tty {
        vars.push(("TERM".into(), "xterm".into()));
    }
    vars.extend(plan.env.iter().cloned());
    vars.push(("ARK_APP_NAME".into(), plan.name.clone()));
    vars.push(("ARK_POD_UUID".into(), pod_uuid.into()));
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in vars {
        match out.iter_mut().find(|(n, _)| *n == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Where `argv0` is, following the app's PATH (as seen from inside the app's root), the way
/// execvp does: the first candidate that exists and is a regular file.
fn find_program(argv0: &str, env: &[String], exists: impl Fn(&str) -> bool) -> Option<String> {
    if argv0.contains('/') {
        return Some(argv0.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .find(|p| exists(p))
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, StartError> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| StartError {
            exit_code: None,
            message: "argument or environment contains NUL".into(),
        })
}

/// execve the app's program, looked up in the app's PATH. Returns only on failure, with the
/// shell's codes: 127 not found, 126 found but not executable.
pub fn exec(plan: &AppPlan, env: &[String]) -> StartError {
    let argv0 = &plan.argv[0];
    let is_file = |p: &str| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false);
    let Some(prog) = find_program(argv0, env, is_file) else {
        return StartError {
            exit_code: Some(127),
            message: format!("{argv0:?}: executable file not found in $PATH"),
        };
    };
    let (argv, env) = match (cstrings(&plan.argv), cstrings(env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let Ok(path) = CString::new(prog.as_bytes()) else {
        return StartError {
            exit_code: None,
            message: "program path contains NUL".into(),
        };
    };
    let e = unistd::execve(&path, &argv, &env).unwrap_err();
    use nix::errno::Errno;
    let code = match e {
        Errno::ENOENT | Errno::ENOTDIR => 127,
        _ => 126,
    };
    StartError {
        exit_code: Some(code),
        message: format!("exec {prog:?}: {}", e.desc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::plan::plan;
    use crate::app::plan::tests::{config, manifest};

    #[test]
    fn env_defaults_overrides_and_forced_vars() {
        let p = plan(&manifest(), &config());
        let env = build_env(&p[0], "ab12", "/home/www");
        assert_eq!(
            env,
            [
                "PATH=/opt/bin",
                "HOME=/home/www",
                "A=2",
                "ARK_APP_NAME=web",
                "ARK_POD_UUID=ab12"
            ]
        );
        let env = build_env(&p[1], "ab12", "/");
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
        assert!(env.contains(&"TERM=xterm".to_string()));
        assert!(env.contains(&"ARK_APP_NAME=side".to_string()));
    }

    #[test]
    fn program_lookup_follows_app_path() {
        let env = vec!["PATH=/opt/bin:/bin".to_string()];
        let exists = |p: &str| p == "/bin/sleep";
        assert_eq!(
            find_program("sleep", &env, exists).as_deref(),
            Some("/bin/sleep")
        );
        assert_eq!(find_program("nope", &env, exists), None);
        assert_eq!(find_program("./x", &env, exists).as_deref(), Some("./x"));
        assert_eq!(
            find_program("sleep", &[], |p| p == "/usr/bin/sleep").as_deref(),
            Some("/usr/bin/sleep")
        );
    }
}
