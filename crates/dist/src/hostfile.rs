//! DeepSpeed-style hostfiles (`worker-1 slots=4` per line, `#` comments, blank lines) and the resource
//! filters `--include` / `--exclude` (`host1:0,1@host2` — `@` separates hosts, `:` starts a slot list,
//! `,` separates slots; a host without a slot list means all its slots). Host order is the file's.

use std::path::Path;

/// One node of a job and the slots (local device indices) it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlots {
    pub host: String,
    pub slots: Vec<usize>,
}

/// A hostfile or filter that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostfileError {
    #[error("reading hostfile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("hostfile {path} line {line}: {msg}")]
    Line {
        path: String,
        line: usize,
        msg: String,
    },
    #[error("hostfile {path} lists no hosts")]
    Empty { path: String },
    #[error("--{flag} {value:?}: {msg}")]
    Filter {
        flag: &'static str,
        value: String,
        msg: String,
    },
}

/// Reads and parses a hostfile.
pub fn read_hostfile(path: &Path) -> Result<Vec<HostSlots>, HostfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostfileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_hostfile(&text, &path.display().to_string())
}

/// Parses hostfile text; `origin` names the file in errors.
pub fn parse_hostfile(text: &str, origin: &str) -> Result<Vec<HostSlots>, HostfileError> {
    let mut hosts: Vec<HostSlots> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |msg: String| HostfileError::Line {
            path: origin.to_string(),
            line: i + 1,
            msg,
        };
        let mut fields = line.split_whitespace();
        let host = fields.next().unwrap_or_default();
        let rest: Vec<&str> = fields.collect();
        let slots = match rest.as_slice() {
            [one] => one.strip_prefix("slots="),
            _ => None,
        }
        .ok_or_else(|| err(format!("expected `<host> slots=<n>`, got {line:?}")))?;
        let n: usize = slots
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| err(format!("slots={slots:?} is not a positive integer")))?;
        if hosts.iter().any(|h| h.host == host) {
            return Err(err(format!("host {host:?} is listed twice")));
        }
        hosts.push(HostSlots {
            host: host.to_string(),
            slots: (0..n).collect(),
        });
    }
    if hosts.is_empty() {
        return Err(HostfileError::Empty {
            path: origin.to_string(),
        });
    }
    Ok(hosts)
}

/// Applies `--include` or `--exclude` (at most one of them) to the hostfile's hosts; hosts left with no
/// slots are dropped, the hostfile's order is kept.
pub fn filter_hosts(
    pool: &[HostSlots],
    include: Option<&str>,
    exclude: Option<&str>,
) -> Result<Vec<HostSlots>, HostfileError> {
    let (flag, value, including) = match (include, exclude) {
        (Some(_), Some(_)) => {
            return Err(HostfileError::Filter {
                flag: "include",
                value: include.unwrap_or_default().into(),
                msg: "--include and --exclude cannot be combined".into(),
            })
        }
        (Some(v), None) => ("include", v, true),
        (None, Some(v)) => ("exclude", v, false),
        (None, None) => return Ok(pool.to_vec()),
    };
    let err = |msg: String| HostfileError::Filter {
        flag,
        value: value.to_string(),
        msg,
    };
    let mut chosen: Vec<Vec<usize>> = if including {
        vec![Vec::new(); pool.len()]
    } else {
        pool.iter().map(|h| h.slots.clone()).collect()
    };
    for part in value.split('@') {
        let (host, slots) = match part.split_once(':') {
            Some((h, s)) => (h, Some(s)),
            None => (part, None),
        };
        let idx = pool
            .iter()
            .position(|h| h.host == host)
            .ok_or_else(|| err(format!("host {host:?} is not in the hostfile")))?;
        let listed = match slots {
            None => pool[idx].slots.clone(),
            Some(s) => {
                s.split(',')
                    .map(|x| {
                        let n: usize = x.trim().parse().map_err(|_| {
                            err(format!("slot {x:?} of host {host:?} is not a number"))
                        })?;
                        if pool[idx].slots.contains(&n) {
                            Ok(n)
                        } else {
                            Err(err(format!(
                                "host {host:?} has no slot {n} (it has slots=0..{})",
                                pool[idx].slots.len()
                            )))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let set = &mut chosen[idx];
        if including {
            set.extend(listed);
            set.sort_unstable();
            set.dedup();
        } else {
            set.retain(|s| !listed.contains(s));
        }
    }
    let hosts: Vec<HostSlots> = pool
        .iter()
        .zip(chosen)
        .filter(|(_, slots)| !slots.is_empty())
        .map(|(h, slots)| HostSlots {
            host: h.host.clone(),
            slots,
        })
        .collect();
    if hosts.is_empty() {
        return Err(err("no host with a slot is left".into()));
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# cluster\n\nworker-0 slots=4\nworker-1   slots=2  # half node\n\
                        10.0.0.7 slots=1\n";

    fn hs(host: &str, slots: &[usize]) -> HostSlots {
        HostSlots {
            host: host.into(),
            slots: slots.to_vec(),
        }
    }

    #[test]
    fn parses_hosts_comments_and_blank_lines() {
        let h = parse_hostfile(FILE, "hf").unwrap();
        assert_eq!(
            h,
            vec![
                hs("worker-0", &[0, 1, 2, 3]),
                hs("worker-1", &[0, 1]),
                hs("10.0.0.7", &[0])
            ]
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let e = parse_hostfile("a slots=1\nb 4\n", "hosts.txt")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hosts.txt line 2") && e.contains("slots="),
            "{e}"
        );
        let e = parse_hostfile("a slots=0\n", "h").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("positive"), "{e}");
        let e = parse_hostfile("a slots=1\na slots=2\n", "h")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        assert!(matches!(
            parse_hostfile("# nothing\n", "h"),
            Err(HostfileError::Empty { .. })
        ));
    }

    #[test]
    fn include_selects_hosts_and_slots_in_file_order() {
        let pool = parse_hostfile(FILE, "hf").unwrap();
        let h = filter_hosts(&pool, Some("worker-1:1@worker-0:2,0"), None).unwrap();
        assert_eq!(h, vec![hs("worker-0", &[0, 2]), hs("worker-1", &[1])]);
        let h = filter_hosts(&pool, Some("10.0.0.7"), None).unwrap();
        assert_eq!(h, vec![hs("10.0.0.7", &[0])]);
        assert_eq!(filter_hosts(&pool, None, None).unwrap(), pool);
    }

    #[test]
    fn exclude_removes_slots_and_emptied_hosts() {
        let pool = parse_hostfile(FILE, "hf").unwrap();
        let h = filter_hosts(&pool, None, Some("worker-0:0,3@10.0.0.7")).unwrap();
        assert_eq!(h, vec![hs("worker-0", &[1, 2]), hs("worker-1", &[0, 1])]);
    }

    #[test]
    fn filter_errors_name_the_flag_and_problem() {
        let pool = parse_hostfile(FILE, "hf").unwrap();
        let e = filter_hosts(&pool, Some("nope:0"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--include") && e.contains("\"nope\""), "{e}");
        let e = filter_hosts(&pool, None, Some("worker-1:5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--exclude") && e.contains("no slot 5"), "{e}");
        let e = filter_hosts(&pool, Some("worker-1:x"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a number"), "{e}");
        let e = filter_hosts(&pool, None, Some("worker-0@worker-1@10.0.0.7"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no host"), "{e}");
        assert!(filter_hosts(&pool, Some("worker-0"), Some("worker-1")).is_err());
    }
}
