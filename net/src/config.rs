//! CNI network configurations (spec 1.0, 0.4.0 accepted): `.conflist` files, and the single
//! plugin `.conf` form, from a config directory; the built-in `default` network (rkt's).

use std::path::{Path, PathBuf};

use ark_pod_spec::pod_net::is_network_name;
use ark_pod_spec::DEFAULT_NETWORK;
use serde_json::{Map, Value};

use crate::error::{clean, Error};

/// Where configs are read unless the manifest says otherwise.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/ark/net.d";
/// The largest config file read.
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;
/// Spec versions this runtime speaks.
pub const CNI_VERSIONS: &[&str] = &["1.0.0", "0.4.0"];
const MAX_PLUGINS: usize = 16;
const MAX_FILES: usize = 1024;

/// The subnet of the built-in `default` network (rkt's).
pub const DEFAULT_SUBNET: &str = "172.16.28.0/24";

/// One network: its name, spec version and plugin configs in chain order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkConfig {
    pub name: String,
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Each plugin's config object, without `name`/`cniVersion` (added when it runs).
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfig {
    /// rkt's `default`: a `ptp` veth with IP masquerade, `host-local` addresses from
    /// [`DEFAULT_SUBNET`] and a default route; then `portmap` for `--port`.
    pub fn builtin_default() -> Self {
        let v = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": DEFAULT_NETWORK,
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": true,
                    "ipam": {
                        "type": "host-local",
                        "subnet": DEFAULT_SUBNET,
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        Self::from_value(v).expect("the built-in network is valid")
    }

    /// Parses a `.conflist` (`plugins: [...]`) or a `.conf` (one plugin) document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("not JSON: {}", clean(&e.to_string(), 200)))?;
        Self::from_value(v)
    }

    fn from_value(v: Value) -> Result<Self, String> {
        let Value::Object(mut top) = v else {
            return Err("not a JSON object".into());
        };
        let name = match top.remove("name") {
            Some(Value::String(n)) if is_network_name(&n) => n,
            Some(Value::String(n)) => {
                return Err(format!("bad network name {:?}", clean(&n, 80)));
            }
            _ => return Err("no \"name\"".into()),
        };
        let cni_version = match top.remove("cniVersion") {
            Some(Value::String(s)) if CNI_VERSIONS.contains(&s.as_str()) => s,
            Some(Value::String(s)) => {
                return Err(format!(
                    "cniVersion {:?} is not supported (want {})",
                    clean(&s, 40),
                    CNI_VERSIONS.join(" or ")
                ))
            }
            _ => return Err("no \"cniVersion\"".into()),
        };
        let plugins = match top.remove("plugins") {
            Some(Value::Array(list)) => list
                .into_iter()
                .map(|p| match p {
                    Value::Object(m) => Ok(m),
                    _ => Err("a plugin config is not an object".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("\"plugins\" is not a list".into()),
            // The single-plugin (.conf) form: the object is the plugin's config.
            None if top.contains_key("type") => vec![top],
            None => return Err("neither \"plugins\" nor \"type\"".into()),
        };
        if plugins.is_empty() || plugins.len() > MAX_PLUGINS {
            return Err(format!(
                "{} plugins (want 1 to {MAX_PLUGINS})",
                plugins.len()
            ));
        }
        for (i, p) in plugins.iter().enumerate() {
            match p.get("type") {
                Some(Value::String(t)) if is_plugin_name(t) => {}
                Some(Value::String(t)) => {
                    return Err(format!("plugins[{i}]: bad type {:?}", clean(t, 80)));
                }
                _ => return Err(format!("plugins[{i}]: no \"type\"")),
            }
        }
        Ok(NetworkConfig {
            name,
            cni_version,
            plugins,
        })
    }

    /// The plugin's `type`, a plain file name (checked at parse time).
    pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
        plugin.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// Whether the plugin declared the `capability` (e.g. `portMappings`).
    pub fn has_capability(plugin: &Map<String, Value>, capability: &str) -> bool {
        plugin
            .get("capabilities")
            .and_then(|c| c.get(capability))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Reads network `name` from `dir`: the file (`*.conflist`, `*.conf`, `*.json`, in name
    /// order) whose `name` it is; the built-in one for `default` when no file is named so.
    pub fn load(dir: &Path, name: &str) -> Result<Self, Error> {
        let not_found = |reason: String| Error::Network {
            network: name.into(),
            reason,
        };
        if !is_network_name(name) {
            return Err(not_found("not a network name".into()));
        }
        let mut broken = None;
        for path in config_files(dir)? {
            let bytes = read_capped(&path)?;
            // A file is ours if it names the network, even when it is broken otherwise.
            let named = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned));
            match Self::from_json(&bytes) {
                Ok(c) if c.name == name => return Ok(c),
                Ok(_) => {}
                Err(reason) if named.as_deref() == Some(name) => {
                    return Err(Error::ConfigFile { path, reason })
                }
                Err(reason) => {
                    broken.get_or_insert((path, reason));
                }
            }
        }
        if name == DEFAULT_NETWORK {
            return Ok(Self::builtin_default());
        }
        Err(match broken {
            // The network may be the one in the file that does not parse: say so.
            Some((path, reason)) => Error::ConfigFile {
                path,
                reason: format!("{reason} (and no other config defines network {name:?})"),
            },
            None => not_found(format!("no config in {} defines it", dir.display())),
        })
    }
}

/// A plugin binary's name: a plain file name, nothing that walks out of the plugin dirs.
pub fn is_plugin_name(s: &str) -> bool {
    is_network_name(s) && s != "." && s != ".."
}

fn config_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::error::io("read config dir", dir)(e)),
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .take(MAX_FILES)
        .collect();
    files.sort();
    Ok(files)
}

fn read_capped(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(crate::error::io("open network config", path))?;
    if !f
        .metadata()
        .map_err(crate::error::io("stat network config", path))?
        .is_file()
    {
        return Err(Error::ConfigFile {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    let mut bytes = Vec::new();
    f.take(CONFIG_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(crate::error::io("read network config", path))?;
    if bytes.len() as u64 > CONFIG_MAX_BYTES {
        return Err(Error::ConfigFile {
            path: path.into(),
            reason: format!("larger than {CONFIG_MAX_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_and_conf_forms() {
        let l = NetworkConfig::from_json(
            br#"{"cniVersion":"1.0.0","name":"n1","plugins":[{"type":"bridge","bridge":"b0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!(l.name, "n1");
        assert_eq!(l.plugins.len(), 2);
        assert!(NetworkConfig::has_capability(&l.plugins[1], "portMappings"));
        assert!(!NetworkConfig::has_capability(
            &l.plugins[0],
            "portMappings"
        ));
        let c = NetworkConfig::from_json(br#"{"cniVersion":"0.4.0","name":"n2","type":"ptp"}"#)
            .unwrap();
        assert_eq!(NetworkConfig::plugin_type(&c.plugins[0]), "ptp");
        assert!(!c.plugins[0].contains_key("name"));
    }

    #[test]
    fn bad_configs_are_one_line_errors() {
        for (json, needle) in [
            (
                &br#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"../../bin/sh"}]}"#[..],
                "bad type",
            ),
            (
                br#"{"cniVersion":"9.9.9","name":"x","type":"ptp"}"#,
                "not supported",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"a/b","type":"ptp"}"#,
                "bad network name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
                "0 plugins",
            ),
            (br#"{"cniVersion":"1.0.0","name":"x"}"#, "neither"),
            (
                b"{\"cniVersion\":\"1.0.0\",\"name\":\"x\n\x1b[2J",
                "not JSON",
            ),
        ] {
            let e = NetworkConfig::from_json(json).unwrap_err();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains('\n') && !e.contains('\x1b'), "{e:?}");
        }
    }

    #[test]
    fn load_by_name_and_the_builtin_default() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            NetworkConfig::load(d.path(), "default").unwrap(),
            NetworkConfig::builtin_default()
        );
        std::fs::write(
            d.path().join("10-a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("20-b.conf"), b"{ broken").unwrap();
        assert_eq!(NetworkConfig::load(d.path(), "a").unwrap().name, "a");
        let e = NetworkConfig::load(d.path(), "b").unwrap_err().to_string();
        assert!(e.contains("20-b.conf") && e.contains("not JSON"), "{e}");
        // A file named default replaces the built-in one.
        std::fs::write(
            d.path().join("30-d.conflist"),
            br#"{"cniVersion":"1.0.0","name":"default","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(
            NetworkConfig::plugin_type(
                &NetworkConfig::load(d.path(), "default").unwrap().plugins[0]
            ),
            "bridge"
        );
        // Named, but broken otherwise: that file's error.
        std::fs::write(
            d.path().join("40-c.conflist"),
            br#"{"cniVersion":"1.0.0","name":"c","plugins":{}}"#,
        )
        .unwrap();
        let e = NetworkConfig::load(d.path(), "c").unwrap_err().to_string();
        assert!(
            e.contains("40-c.conflist") && e.contains("not a list"),
            "{e}"
        );
    }
}
