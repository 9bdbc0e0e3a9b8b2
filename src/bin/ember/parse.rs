//! The grammar of the command line's values: sizes, durations and the
//! `key=value,...` device specs, each turned into the library's
//! configuration types, with an error naming the bad value.
//!
//! The fuzz crate's `cli_parsers` target compiles this file too (by path).

use std::path::PathBuf;
use std::time::Duration;

use ember::{BootProtocol, DiskConfig, Modules, NetConfig, SeccompMode, SerialConfig, ShareConfig, VirtioTransport};

/// A value on the command line that is not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A size string could not be parsed.
    #[error("invalid size '{0}': expected a number of MiB or a number with a K, M, G or T suffix (e.g. 512M, 2G)")]
    Size(String),
    /// A duration string could not be parsed.
    #[error("invalid duration '{0}': expected e.g. 90s, 500ms, 2m or a plain number of seconds")]
    Duration(String),
    /// A `--serial` value that is not understood.
    #[error("invalid serial option '{0}': expected stdio, file=PATH or none")]
    Serial(String),
    /// A `--boot` value that is not understood.
    #[error("invalid boot protocol '{0}': expected auto, linux64 or pvh")]
    Boot(String),
    /// A `--memory-backing` value that is not understood.
    #[error("invalid memory backing '{0}': expected lazy or copy")]
    Backing(String),
    /// A `--seccomp` value that is not understood.
    #[error("invalid seccomp mode '{0}': expected kill, log or off")]
    Seccomp(String),
    /// A `--user` value that is not understood.
    #[error("invalid user '{0}': expected a numeric UID or UID:GID")]
    User(String),
    /// A `key=value,...` device option string is malformed.
    #[error("invalid {what} option '{value}': {why}")]
    DeviceOption {
        /// Which option (`--disk`, `--net`).
        what: &'static str,
        /// The offending text.
        value: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Parses a memory size: a plain number is MiB; `K`, `M`, `G`, `T` suffixes
/// (optionally followed by `iB` or `B`) are binary multiples.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let bad = || ParseError::Size(s.to_string());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let suffix = t[digits_end..].to_ascii_lowercase();
    let unit = match suffix.as_str() {
        "" | "m" | "mb" | "mib" => 1 << 20,
        "k" | "kb" | "kib" => 1 << 10,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1u64 << 40,
        "b" => 1,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// Parses a duration: `90s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let bad = || ParseError::Duration(s.to_string());
    let t = s.trim();
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    if num_end == 0 {
        return Err(bad());
    }
    let n: f64 = t[..num_end].parse().map_err(|_| bad())?;
    let secs = match &t[num_end..] {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `--serial`: `stdio`, `file=PATH` or `none`.
pub fn parse_serial(s: &str) -> Result<SerialConfig, ParseError> {
    match s {
        "stdio" => Ok(SerialConfig::Stdio),
        "none" | "off" => Ok(SerialConfig::None),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialConfig::File(PathBuf::from(p))),
            _ => Err(ParseError::Serial(s.to_string())),
        },
    }
}

/// Parses `--boot`: `auto`, `linux64` or `pvh`.
pub fn parse_boot(s: &str) -> Result<BootProtocol, ParseError> {
    match s {
        "auto" => Ok(BootProtocol::Auto),
        "linux64" | "linux" | "elf" => Ok(BootProtocol::Linux64),
        "pvh" => Ok(BootProtocol::Pvh),
        _ => Err(ParseError::Boot(s.to_string())),
    }
}

/// Parses `--seccomp`: `kill`, `log` or `off`.
pub fn parse_seccomp(s: &str) -> Result<SeccompMode, ParseError> {
    match s {
        "kill" => Ok(SeccompMode::Kill),
        "log" => Ok(SeccompMode::Log),
        "off" => Ok(SeccompMode::Off),
        _ => Err(ParseError::Seccomp(s.to_string())),
    }
}

/// Parses `--memory-backing`: `lazy` or `copy`.
pub fn parse_backing(s: &str) -> Result<ember::snapshot::MemoryBacking, ParseError> {
    match s {
        "lazy" => Ok(ember::snapshot::MemoryBacking::Lazy),
        "copy" => Ok(ember::snapshot::MemoryBacking::Copy),
        _ => Err(ParseError::Backing(s.to_string())),
    }
}

/// Parses `--user`: `UID[:GID]` (numbers; the gid defaults to the uid).
pub fn parse_user(s: &str) -> Result<(u32, u32), ParseError> {
    let bad = || ParseError::User(s.to_string());
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid: u32 = u.parse().map_err(|_| bad())?;
    let gid: u32 = match g {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    Ok((uid, gid))
}

/// Parses `--disk`: `path=IMG[,readonly=on|off][,id=STRING][,transport=pci|mmio]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, ParseError> {
    let bad = |why: &str| ParseError::DeviceOption { what: "--disk", value: s.to_string(), why: why.to_string() };
    let mut path = None;
    let mut read_only = false;
    let mut id = None;
    let mut seen = Vec::new();
    let mut transport = VirtioTransport::default();
    for kv in split_options(s) {
        let (k, v) = kv.split_once('=').ok_or_else(|| bad("expected key=value"))?;
        once(&mut seen, canonical(k)).map_err(|k| bad(&format!("'{k}' given twice")))?;
        match k {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "readonly" | "ro" => read_only = parse_on_off(v).ok_or_else(|| bad("readonly takes on or off"))?,
            "id" | "serial" => {
                if v.len() > 20 {
                    return Err(bad("id is at most 20 bytes"));
                }
                id = Some(v.to_string())
            }
            "transport" => transport = parse_transport(v).map_err(|why| bad(&why))?,
            _ => return Err(bad(&format!("unknown key '{k}' (known: path, readonly, id, transport)"))),
        }
    }
    Ok(DiskConfig { path: path.ok_or_else(|| bad("path=IMG is required"))?, read_only, id, transport })
}

/// Parses `--net`: `tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,transport=pci|mmio]` (the MAC in ember's
/// one grammar, [`ember_devices::virtio::net::parse_mac`]).
pub fn parse_net(s: &str) -> Result<NetConfig, ParseError> {
    let bad = |why: &str| ParseError::DeviceOption { what: "--net", value: s.to_string(), why: why.to_string() };
    let mut tap = None;
    let mut mac = None;
    let mut seen = Vec::new();
    let mut transport = VirtioTransport::default();
    for kv in split_options(s) {
        let (k, v) = kv.split_once('=').ok_or_else(|| bad("expected key=value"))?;
        once(&mut seen, canonical(k)).map_err(|k| bad(&format!("'{k}' given twice")))?;
        match k {
            "tap" if !v.is_empty() && v.len() < 16 => tap = Some(v.to_string()),
            "tap" => return Err(bad("tap name must be 1 to 15 bytes")),
            "mac" => {
                let m = ember_devices::virtio::net::parse_mac(v);
                mac = Some(m.ok_or_else(|| bad("mac must look like 02:00:00:00:00:01"))?);
            }
            "transport" => transport = parse_transport(v).map_err(|why| bad(&why))?,
            _ => return Err(bad(&format!("unknown key '{k}' (known: tap, mac, transport)"))),
        }
    }
    Ok(NetConfig { tap: tap.ok_or_else(|| bad("tap=NAME is required"))?, mac, transport })
}

/// The `transport=` value of `--disk` / `--net` / `--share`, and
/// `--root-transport`.
pub fn parse_transport(v: &str) -> Result<VirtioTransport, String> {
    VirtioTransport::from_name(v).ok_or_else(|| format!("transport '{v}' is not pci or mmio"))
}

/// A `--share` value: a host directory, what the guest names it by, and
/// whether it is read-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareSpec {
    /// The host directory.
    pub path: PathBuf,
    /// The mount tag, when given (`DIR:TAG`).
    pub tag: Option<String>,
    /// Where `ember smoke` mounts it in the guest, when given
    /// (`DIR:/GUEST/PATH`).
    pub guest_path: Option<PathBuf>,
    /// `,ro`.
    pub read_only: bool,
    /// `,transport=pci|mmio` (default pci).
    pub transport: VirtioTransport,
}

impl ShareSpec {
    /// The share for the VM: the given tag, else `share{index}`.
    pub fn to_config(&self, index: usize) -> ShareConfig {
        ShareConfig {
            path: self.path.clone(),
            tag: self.tag.clone().unwrap_or_else(|| ShareConfig::default_tag(index)),
            read_only: self.read_only,
            transport: self.transport,
        }
    }
}

/// Parses `--share` of `ember smoke`:
/// `HOST_DIR[:GUEST_PATH|:TAG][,ro|,rw][,transport=pci|mmio]`. After the
/// last `:`, an absolute path is where the guest mounts the share, anything
/// else its mount tag. Read-write unless `,ro`; on virtio-pci unless
/// `,transport=mmio`. The options are the trailing comma-separated words
/// that are options (a directory may have a comma in its name), each at
/// most once.
pub fn parse_share(s: &str) -> Result<ShareSpec, ParseError> {
    let bad = |why: &str| ParseError::DeviceOption { what: "--share", value: s.to_string(), why: why.to_string() };
    let (mut spec, mut read_only, mut transport) = (s, None, None);
    while let Some((rest, word)) = spec.rsplit_once(',') {
        if let Some(t) = word.strip_prefix("transport=") {
            if transport.replace(parse_transport(t).map_err(|e| bad(&e))?).is_some() {
                return Err(bad("transport= is given twice"));
            }
        } else if word == "ro" || word == "rw" {
            if read_only.replace(word == "ro").is_some() {
                return Err(bad("ro/rw is given twice"));
            }
        } else {
            break;
        }
        spec = rest;
    }
    let (read_only, transport) = (read_only.unwrap_or(false), transport.unwrap_or_default());
    let (host, target) = match spec.rsplit_once(':') {
        Some((host, target)) => (host, Some(target)),
        None => (spec, None),
    };
    if host.is_empty() {
        return Err(bad("the host directory is missing (expected HOST_DIR[:GUEST_PATH|:TAG][,ro|,rw])"));
    }
    let (mut tag, mut guest_path) = (None, None);
    match target {
        None => {}
        Some("") => return Err(bad("nothing after ':' (a guest path or a mount tag)")),
        Some(t) if t.starts_with('/') => guest_path = Some(PathBuf::from(t)),
        Some(t) if t.len() > ShareConfig::MAX_TAG_LEN => return Err(bad("a mount tag is at most 255 bytes")),
        Some(t) => tag = Some(t.to_string()),
    }
    Ok(ShareSpec { path: PathBuf::from(host), tag, guest_path, read_only, transport })
}

/// Parses `--share` of `ember run`:
/// `HOST_DIR[:TAG][,ro|,rw][,transport=pci|mmio]` (the guest mounts it
/// itself, by its tag).
pub fn parse_run_share(s: &str) -> Result<ShareSpec, ParseError> {
    let spec = parse_share(s)?;
    if spec.guest_path.is_some() {
        return Err(ParseError::DeviceOption {
            what: "--share",
            value: s.to_string(),
            why: "ember run takes HOST_DIR[:TAG][,ro|,rw][,transport=pci|mmio]: the guest mounts the share itself by its tag (mount -t 9p -o trans=virtio TAG DIR); guest paths are for ember smoke".into(),
        });
    }
    Ok(spec)
}

/// Parses `--modules`: `auto`, `none` or a directory.
pub fn parse_modules(s: &str) -> Result<Modules, ParseError> {
    Ok(match s {
        "auto" => Modules::Auto,
        "none" => Modules::Off,
        "" => {
            return Err(ParseError::DeviceOption {
                what: "--modules",
                value: s.into(),
                why: "expected a module directory, auto or none".into(),
            })
        }
        d => Modules::Dir(PathBuf::from(d)),
    })
}

/// Parses `--env NAME=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), ParseError> {
    let bad = |why: &str| ParseError::DeviceOption { what: "--env", value: s.to_string(), why: why.to_string() };
    let (k, v) = s.split_once('=').ok_or_else(|| bad("expected NAME=VALUE"))?;
    if k.is_empty()
        || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || k.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(bad("a variable name is letters, digits and '_', not starting with a digit"));
    }
    if v.contains('\0') {
        return Err(bad("the value contains a NUL byte"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The one name of a device option key and its aliases.
fn canonical(k: &str) -> &str {
    match k {
        "ro" => "readonly",
        "serial" => "id",
        k => k,
    }
}

/// Records `key`; an error (naming it) if it was seen already: a repeated
/// key is a mistake, not "the last one wins".
fn once<'a>(seen: &mut Vec<&'a str>, key: &'a str) -> Result<(), &'a str> {
    if seen.contains(&key) {
        return Err(key);
    }
    seen.push(key);
    Ok(())
}

fn split_options(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').filter(|p| !p.is_empty())
}

fn parse_on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16 item 9: a repeated key (or a key and its alias) was
    /// silently "last one wins".
    #[test]
    fn repeated_device_keys_are_errors() {
        for s in ["path=a,path=b", "path=a,readonly=on,ro=off", "path=a,id=x,serial=y", "path=a,ro=on,ro=on"] {
            let e = parse_disk(s).unwrap_err().to_string();
            assert!(e.contains("given twice") && e.contains(s), "{s}: {e}");
        }
        for s in ["tap=a,tap=b", "tap=a,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02"] {
            let e = parse_net(s).unwrap_err().to_string();
            assert!(e.contains("given twice") && e.contains(s), "{s}: {e}");
        }
        assert!(parse_disk("path=a,ro=on,id=x").is_ok());
        assert!(parse_net("tap=a,mac=02:00:00:00:00:01").is_ok());
    }

    #[test]
    fn macs_are_strict() {
        use ember_devices::virtio::net::parse_mac;
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("+2:00:00:00:00:01"), None);
        assert_eq!(parse_mac("2:00:00:00:00:01"), None);
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:01:02"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("128").unwrap(), 128 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("4096K").unwrap(), 4 << 20);
        for bad in ["", "M", "12Q", "-1", "1.5G", "99999999999999999999", "18446744073709551615G"] {
            assert_eq!(parse_size(bad), Err(ParseError::Size(bad.into())), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "5x", "1e999", "-3s", "1.2.3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_options() {
        assert!(matches!(parse_serial("stdio"), Ok(SerialConfig::Stdio)));
        assert!(matches!(parse_serial("none"), Ok(SerialConfig::None)));
        assert!(
            matches!(parse_serial("file=/tmp/x"), Ok(SerialConfig::File(p)) if p == std::path::Path::new("/tmp/x"))
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("tcp").is_err());
    }

    #[test]
    fn disk_options() {
        let d = parse_disk("path=/x.img,readonly=on,id=abc").unwrap();
        let want = DiskConfig { read_only: true, id: Some("abc".into()), ..DiskConfig::new("/x.img") };
        assert_eq!(d, want);
        assert_eq!(d.transport, VirtioTransport::Pci, "the default");
        assert_eq!(parse_disk("path=/x.img,transport=mmio").unwrap().transport, VirtioTransport::Mmio);
        assert_eq!(parse_disk("path=/x.img,transport=pci").unwrap().transport, VirtioTransport::Pci);
        let e = parse_disk("path=/x.img,transport=isa").unwrap_err().to_string();
        assert!(e.contains("transport 'isa' is not pci or mmio"), "{e}");
        assert!(!parse_disk("path=/x.img").unwrap().read_only);
        assert!(parse_disk("readonly=on").is_err());
        assert!(parse_disk("path=/x,readonly=maybe").is_err());
        assert!(parse_disk("path=/x,color=red").is_err());
        assert!(parse_disk("path=/x,id=123456789012345678901").is_err());
        assert!(parse_disk("/x.img").is_err());
    }

    #[test]
    fn net_options() {
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(n.transport, VirtioTransport::Pci);
        assert_eq!(parse_net("tap=tap0,transport=mmio").unwrap().transport, VirtioTransport::Mmio);
        let e = parse_net("tap=tap0,transport=").unwrap_err().to_string();
        assert!(e.contains("transport '' is not pci or mmio"), "{e}");
        assert!(parse_net("tap=tap0,mac=02:00:00:00:00").is_err());
        assert!(parse_net("tap=tap0,mac=02:00:00:00:00:01:02").is_err());
        assert!(parse_net("tap=waytoolonginterfacename").is_err());
        assert!(parse_net("mac=02:00:00:00:00:01").is_err());
    }

    #[test]
    fn share_options() {
        let spec = |path: &str, tag: Option<&str>, guest: Option<&str>, ro: bool| ShareSpec {
            path: path.into(),
            tag: tag.map(Into::into),
            guest_path: guest.map(Into::into),
            read_only: ro,
            transport: VirtioTransport::Pci,
        };
        let mmio = |s: ShareSpec| ShareSpec { transport: VirtioTransport::Mmio, ..s };
        assert_eq!(parse_share("/srv/data"), Ok(spec("/srv/data", None, None, false)));
        assert_eq!(parse_share("/srv/data,ro"), Ok(spec("/srv/data", None, None, true)));
        assert_eq!(parse_share("/srv/data:data,rw"), Ok(spec("/srv/data", Some("data"), None, false)));
        assert_eq!(parse_share("out:/mnt/out,ro"), Ok(spec("out", None, Some("/mnt/out"), true)));
        assert_eq!(parse_share("/a,b"), Ok(spec("/a,b", None, None, false)));
        assert_eq!(parse_share("/a:b:c"), Ok(spec("/a:b", Some("c"), None, false)));
        assert_eq!(parse_share("/a,transport=mmio"), Ok(mmio(spec("/a", None, None, false))));
        assert_eq!(parse_share("/a:t,transport=mmio,ro"), Ok(mmio(spec("/a", Some("t"), None, true))));
        assert_eq!(parse_share("/a:/m,ro,transport=pci"), Ok(spec("/a", None, Some("/m"), true)));
        assert_eq!(parse_share("/a,b,rw"), Ok(spec("/a,b", None, None, false)));
        for bad in
            ["", ",ro", ":tag", "/a:", "/a:,ro", "/a,transport=usb", "/a,ro,rw", "/a,transport=pci,transport=mmio"]
        {
            let e = parse_share(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
        assert!(parse_share(&format!("/a:{}", "t".repeat(256))).is_err());
        assert_eq!(parse_run_share("/srv:t,ro"), Ok(spec("/srv", Some("t"), None, true)));
        let e = parse_run_share("/srv:/mnt").unwrap_err().to_string();
        assert!(e.contains("'/srv:/mnt'") && e.contains("ember smoke"), "{e}");
        assert_eq!(spec("/s", None, None, true).to_config(2).tag, "share2");
        assert_eq!(spec("/s", Some("x"), None, true).to_config(2).tag, "x");
    }

    #[test]
    fn modules_and_env() {
        assert_eq!(parse_modules("auto"), Ok(Modules::Auto));
        assert_eq!(parse_modules("none"), Ok(Modules::Off));
        assert_eq!(parse_modules("/lib/modules/6.1"), Ok(Modules::Dir("/lib/modules/6.1".into())));
        assert!(parse_modules("").is_err());
        assert_eq!(parse_env("A_1=x=y"), Ok(("A_1".into(), "x=y".into())));
        assert_eq!(parse_env("HOME="), Ok(("HOME".into(), String::new())));
        for bad in ["noeq", "=v", "1A=v", "A-B=v"] {
            assert!(parse_env(bad).unwrap_err().to_string().contains(&format!("'{bad}'")), "{bad}");
        }
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("65534"), Ok((65534, 65534)));
        assert_eq!(parse_user("1000:100"), Ok((1000, 100)));
        assert!(parse_user("nobody").is_err());
        assert!(parse_user("1:").is_err());
        assert!(parse_user("-1").is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse_seccomp("kill"), Ok(SeccompMode::Kill));
        assert_eq!(parse_seccomp("log"), Ok(SeccompMode::Log));
        assert_eq!(parse_seccomp("off"), Ok(SeccompMode::Off));
        assert!(parse_seccomp("on").is_err());
        assert_eq!(parse_boot("pvh"), Ok(BootProtocol::Pvh));
        assert!(parse_boot("uefi").is_err());
    }
}
